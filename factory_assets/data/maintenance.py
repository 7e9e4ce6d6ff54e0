"""Data retention and the right to erasure, as transactions on the warehouse; and model staleness.

Retention drops whole days older than a cut-off from ``raw_events``, its quarantine, the ingestion log and
every feature view, and removes their ledger rows (so a training window reaching back there is *missing*,
never silently shorter).  Erasure deletes one user's events from every partition, recomputes each affected
day's data version, rebuilds that day's feature partitions from the remaining events, and records the request
(with a sha256 of the user id, not the id).  A model whose manifest names an input partition whose data
version has since changed is *stale*: :func:`stale_inputs` lists those partitions.
"""

from __future__ import annotations

import hashlib
from datetime import date, datetime, timedelta, timezone

import duckdb

from factory_assets.feature_store import contract, storage, store, views
from factory_assets.data.warehouse import (
    INGESTION_LOG,
    LEDGER,
    QUARANTINE,
    RAW_EVENTS,
    ledger,
    partition_data_version,
    record_partition,
)

DERIVED_VIEWS = (store.USER_FEATURES, store.ITEM_FEATURES)  # built from several input partitions
RETENTION_LOG = "retention_log"
ERASURE_LOG = contract.ERASURE_LOG  # read by the MLOps half through the contract
FEATURE_TABLES: dict[str, str] = {
    store.USER_ITEM_DAILY: "day", store.ITEM_DAILY: "day", store.USER_FEATURES: "day", store.ITEM_FEATURES: "day",
}

DDL: tuple[str, ...] = (
    f"""CREATE TABLE IF NOT EXISTS {RETENTION_LOG} (
        applied_at TIMESTAMPTZ NOT NULL, cutoff DATE NOT NULL, days_dropped BIGINT NOT NULL,
        rows_dropped BIGINT NOT NULL, first_day DATE, last_day DATE)""",
    f"""CREATE TABLE IF NOT EXISTS {ERASURE_LOG} (
        applied_at TIMESTAMPTZ NOT NULL, user_sha256 VARCHAR NOT NULL, rows_deleted BIGINT NOT NULL,
        days VARCHAR NOT NULL, reason VARCHAR NOT NULL)""",
)
storage.declare(RETENTION_LOG, ())  # append-only logs: one file per commit (parquet storage)
storage.declare(ERASURE_LOG, ())


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create the maintenance log tables if missing (idempotent)."""
    for statement in DDL:
        con.execute(statement)


def _ident(name: str) -> str:
    """A quoted SQL identifier (table and column names are module constants; values are always parameters)."""
    return '"' + name.replace('"', '""') + '"'


def apply_retention(con: duckdb.DuckDBPyConnection, today: date, retention_days: int) -> dict:
    """Drop every day before ``today - retention_days`` from raw data and feature views, in one transaction.

    Returns:
        ``{"cutoff", "days_dropped", "rows_dropped", "first_day", "last_day"}`` (also appended to
        ``retention_log``).
    Raises:
        ValueError: if ``retention_days`` < 1.
    """
    if retention_days < 1:
        raise ValueError(f"retention_days must be >= 1, got {retention_days}")
    cutoff = today - timedelta(days=retention_days)
    with storage.transaction(con):
        days = [r[0] for r in con.execute(
            f"SELECT DISTINCT partition_day FROM {_ident(LEDGER)} WHERE asset = ? AND partition_day < ? ORDER BY 1",
            [RAW_EVENTS, cutoff],
        ).fetchall()]
        rows = con.execute(f"SELECT count(*) FROM {_ident(RAW_EVENTS)} WHERE partition_day < ?", [cutoff]).fetchone()[0]
        for table, column in {RAW_EVENTS: "partition_day", QUARANTINE: "partition_day", INGESTION_LOG: "partition_day",
                              **FEATURE_TABLES, LEDGER: "partition_day"}.items():
            storage.delete_where(con, table, f"{_ident(column)} < ?", [cutoff])
        summary = {
            "cutoff": cutoff.isoformat(),
            "days_dropped": len(days),
            "rows_dropped": int(rows),
            "first_day": days[0].isoformat() if days else None,
            "last_day": days[-1].isoformat() if days else None,
        }
        con.execute(
            f"INSERT INTO {storage.into(con, RETENTION_LOG)} VALUES (?, ?, ?, ?, ?, ?)",
            [datetime.now(timezone.utc), cutoff, len(days), int(rows), summary["first_day"], summary["last_day"]],
        )
    return summary


def user_sha256(user_id: str) -> str:
    """The erasure log's key for a user: hex sha256 of the UTF-8 id (the id itself is not kept)."""
    return hashlib.sha256(user_id.encode("utf-8")).hexdigest()


def erase_user(con: duckdb.DuckDBPyConnection, user_id: str, reason: str) -> dict:
    """Delete every event of ``user_id``; recompute versions and features of the affected days.

    Returns:
        ``{"user_sha256", "rows_deleted", "days": {iso day: new raw data version}}``.
    Raises:
        ValueError: for an empty user id.
    """
    if not user_id:
        raise ValueError("user_id must be a non-empty string")
    days = [r[0] for r in con.execute(
        f"SELECT DISTINCT partition_day FROM {_ident(RAW_EVENTS)} WHERE user_id = ? ORDER BY 1", [user_id]
    ).fetchall()]
    new_versions: dict[str, str] = {}
    with storage.transaction(con):
        rows = storage.delete_where(con, RAW_EVENTS, "user_id = ?", [user_id])
        storage.delete_where(con, QUARANTINE, "user_id = ?", [user_id])
        for day in days:  # the writer's version scheme: the same rows always give the same version
            version = partition_data_version(con, day)
            remaining = con.execute(
                f"SELECT count(*) FROM {_ident(RAW_EVENTS)} WHERE partition_day = ?", [day]
            ).fetchall()[0][0]
            record_partition(con, RAW_EVENTS, day, version, int(remaining))
            new_versions[day.isoformat()] = version
        con.execute(
            f"INSERT INTO {storage.into(con, ERASURE_LOG)} VALUES (?, ?, ?, ?, ?)",
            [datetime.now(timezone.utc), user_sha256(user_id), int(rows), ",".join(new_versions), reason],
        )
    for view in FEATURE_TABLES:  # each rebuild is its own atomic transaction, from the erased raw days
        built = ledger(con, view, min(days), date.max)["partition_day"] if days else []
        for day in built:  # the erased days, and later days whose inputs include them (item_features)
            if day in days or (view in DERIVED_VIEWS and views.is_stale(con, view, day)):
                views.build_view_partition(con, view, day)
    for table in _online_tables_with_users(con):
        with storage.transaction(con):
            storage.delete_where(con, table, "user_id = ?", [user_id])
    return {"user_sha256": user_sha256(user_id), "rows_deleted": int(rows), "days": new_versions}


def _online_tables_with_users(con: duckdb.DuckDBPyConnection) -> list[str]:
    rows = con.execute(
        "SELECT DISTINCT table_name FROM information_schema.columns WHERE table_name LIKE 'online\\_%' ESCAPE '\\' "
        "AND column_name = 'user_id' AND table_schema = current_schema()"
    ).fetchall()
    return [r[0] for r in rows if r[0].isidentifier()]
