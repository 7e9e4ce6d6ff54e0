"""The DuckDB warehouse: raw events, quarantine and a ledger of written partitions.

Every table is keyed by ``partition_day`` (a UTC ``DATE``).  A partition write is one transaction:
delete that day, insert the new rows, record the ledger row; a failure rolls back and leaves the previous
version.  The ledger is what tells a *complete, empty* day (a ledger row with ``row_count = 0``) from a
*missing* one (no ledger row).

SQL values are always parameters; table names come only from the constants in this module.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import date, datetime, timezone

import duckdb
import pandas as pd

from factory_assets.data.sources.base import FileIngest
from factory_assets.feature_store import storage
from factory_assets.feature_store.contract import LEDGER, LEDGER_DDL, RAW_EVENTS, ledger, record_partition  # noqa: F401 (re-exported)
from factory_assets.data.sources.schema import EVENT_COLUMNS, QUARANTINE_COLUMNS

QUARANTINE = "raw_events_quarantine"
INGESTION_LOG = "ingestion_log"

DDL: tuple[str, ...] = (
    f"""CREATE TABLE IF NOT EXISTS {RAW_EVENTS} (
        partition_day DATE NOT NULL, event_id VARCHAR NOT NULL, user_id VARCHAR NOT NULL,
        item_id VARCHAR NOT NULL, event_type VARCHAR NOT NULL, ts TIMESTAMPTZ NOT NULL,
        quantity BIGINT NOT NULL, value DOUBLE NOT NULL)""",
    # partition_day is NULL for rows that belong to no day (bad timestamps, unreadable files).
    f"""CREATE TABLE IF NOT EXISTS {QUARANTINE} (
        partition_day DATE, event_id VARCHAR, user_id VARCHAR, item_id VARCHAR,
        event_type VARCHAR, ts VARCHAR, quantity VARCHAR, value VARCHAR, reason VARCHAR NOT NULL,
        detail VARCHAR, source_file VARCHAR, source_line BIGINT, source_sha256 VARCHAR)""",
    f"""CREATE TABLE IF NOT EXISTS {INGESTION_LOG} (
        file_sha256 VARCHAR NOT NULL, partition_day DATE NOT NULL, file_name VARCHAR NOT NULL,
        size_bytes BIGINT NOT NULL, rows_accepted BIGINT NOT NULL, rows_quarantined BIGINT NOT NULL,
        ingested_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (file_sha256, partition_day))""",
    LEDGER_DDL,
)
for _table in (RAW_EVENTS, QUARANTINE, INGESTION_LOG):  # one file per day (parquet storage)
    storage.declare(_table, ("partition_day",))


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create the warehouse tables if they do not exist (idempotent)."""
    for statement in DDL:
        con.execute(statement)


#: Bumped when the way :func:`partition_data_version` hashes rows changes.
_VERSION_SCHEME = "raw-rows/duckdb-hash/v1"
_VERSION_SQL = f"""
SELECT count(*), coalesce(sum(h1::HUGEINT), 0), coalesce(sum(h2::HUGEINT), 0), coalesce(bit_xor(h1), 0)
FROM (SELECT hash({', '.join(EVENT_COLUMNS)}) AS h1, hash({', '.join(reversed(EVENT_COLUMNS))}) AS h2
      FROM {RAW_EVENTS} WHERE partition_day = ?)
"""


def partition_data_version(con: duckdb.DuckDBPyConnection, day: date) -> str:
    """Content hash of the stored ``raw_events`` rows of ``day`` (hex sha256), independent of row order.

    Every row is hashed by DuckDB (``hash`` of its :data:`EVENT_COLUMNS`, in two column orders); the
    version is the sha256 of the scheme, the column types, the row count and the 128-bit sums (plus the
    xor) of those row hashes.  Equal multisets of rows give equal versions in any process or run (DuckDB's
    ``hash`` has no per-process seed); a different row changes it except with probability ~2^-64.  The value
    depends on DuckDB's hash function, so a DuckDB upgrade may change every version once (a re-materialise).
    """
    types = con.execute(
        "SELECT string_agg(column_name || ':' || data_type, '|' ORDER BY ordinal_position) "
        "FROM information_schema.columns WHERE table_name = ? AND table_schema = current_schema()",
        [RAW_EVENTS],
    ).fetchall()[0][0]
    count, sum1, sum2, xor = con.execute(_VERSION_SQL, [day]).fetchall()[0]
    digest = hashlib.sha256(f"{_VERSION_SCHEME}|{types}|{count}|{sum1}|{sum2}|{xor}".encode())
    return digest.hexdigest()


def write_raw_partition(
    con: duckdb.DuckDBPyConnection,
    day: date,
    events: pd.DataFrame,
    quarantined: pd.DataFrame,
    undated: pd.DataFrame | None = None,
    files: Sequence[FileIngest] = (),
) -> str:
    """Atomically replace one day of raw events, its quarantine and its ingestion log; return the data version.

    Args:
        events: validated events (:data:`EVENT_COLUMNS`, schema dtypes), all with ``ts`` on ``day``; any
            row order (the version does not depend on it; rows are stored in the order given).
        quarantined: the day's rejected rows (:data:`QUARANTINE_COLUMNS`).
        undated: rejected rows of no day; each ``(source_sha256, source_line, reason)`` is stored once
            (with ``partition_day`` NULL), however many days read the same file.
        files: what each landed file gave this day (``ingestion_log``, keyed by file sha256 and day).

    The frame is read by DuckDB directly (registered, no copy through Python objects).  One transaction:
    delete the day, insert events, quarantine and log rows, compute :func:`partition_data_version` of what
    was inserted, record the ledger row.

    Returns:
        the day's data version (:func:`partition_data_version`).

    Raises:
        duckdb.Error: the transaction is rolled back and the previous version of the day stays.
    """
    ordered = events if list(events.columns) == list(EVENT_COLUMNS) else events.loc[:, list(EVENT_COLUMNS)]
    try:
        with storage.transaction(con):
            delete_partition_rows(con, day)
            con.register("_new_events", ordered)
            con.execute(
                f"INSERT INTO {storage.into(con, RAW_EVENTS)} SELECT ?::DATE, {', '.join(EVENT_COLUMNS)} FROM _new_events",
                [day],
            )
            insert_quarantine(con, day, quarantined, undated)
            insert_ingestion_log(con, day, files)
            version = partition_data_version(con, day)
            record_partition(con, RAW_EVENTS, day, version, len(ordered))
    finally:
        _unregister(con, "_new_events")
    return version


def delete_partition_rows(con: duckdb.DuckDBPyConnection, day: date) -> None:
    """Delete ``day`` from ``raw_events``, its dated quarantine and its ingestion log (inside the writer's
    transaction; the ledger row is replaced by :func:`record_partition`)."""
    for table in (RAW_EVENTS, QUARANTINE, INGESTION_LOG):
        storage.clear(con, table, partition_day=day)


def insert_quarantine(
    con: duckdb.DuckDBPyConnection, day: date, quarantined: pd.DataFrame, undated: pd.DataFrame | None = None
) -> None:
    """Insert the day's quarantine rows and the undated ones (inside the writer's transaction).

    Args:
        quarantined: rows of ``day`` (:data:`QUARANTINE_COLUMNS`), stored with ``partition_day = day``.
        undated: rows of no day (:data:`QUARANTINE_COLUMNS`), stored with ``partition_day`` NULL, each
            ``(source_sha256, source_line, reason)`` once however many days read the same file.
    """
    columns = ", ".join(QUARANTINE_COLUMNS)
    q = quarantined.loc[:, list(QUARANTINE_COLUMNS)]
    u = (undated if undated is not None else quarantined.iloc[0:0]).loc[:, list(QUARANTINE_COLUMNS)]
    try:
        if len(q):
            con.register("_new_quarantine", q)
            con.execute(f"INSERT INTO {storage.into(con, QUARANTINE)} SELECT ?::DATE, {columns} FROM _new_quarantine", [day])
        if len(u):
            con.register("_new_undated", u)
            con.execute(
                f"INSERT INTO {storage.into(con, QUARANTINE)} SELECT NULL, {columns} FROM _new_undated n WHERE NOT EXISTS ("
                f"SELECT 1 FROM {QUARANTINE} q WHERE q.partition_day IS NULL AND q.source_sha256 IS NOT DISTINCT "
                "FROM n.source_sha256 AND q.source_line IS NOT DISTINCT FROM n.source_line AND q.reason = n.reason)"
            )
    finally:
        _unregister(con, "_new_quarantine", "_new_undated")


def insert_ingestion_log(con: duckdb.DuckDBPyConnection, day: date, files: Sequence[FileIngest]) -> None:
    """One ``ingestion_log`` row per landed file of ``day`` (inside the writer's transaction), stamped now (UTC)."""
    now = datetime.now(timezone.utc)
    for f in files:
        con.execute(
            f"INSERT INTO {storage.into(con, INGESTION_LOG)} VALUES (?, ?, ?, ?, ?, ?, ?)",
            [f.sha256, day, f.name, f.size_bytes, f.rows_accepted, f.rows_quarantined, now],
        )


def _unregister(con: duckdb.DuckDBPyConnection, *views: str) -> None:
    for view in views:
        try:
            con.unregister(view)
        except duckdb.Error:
            pass


def read_raw_partition(con: duckdb.DuckDBPyConnection, day: date) -> pd.DataFrame:
    """One day of raw events (:data:`EVENT_COLUMNS`), ordered by ``event_id``."""
    return con.execute(
        f"SELECT {', '.join(EVENT_COLUMNS)} FROM {RAW_EVENTS} WHERE partition_day = ? ORDER BY event_id", [day]
    ).df()


def quarantine_summary(con: duckdb.DuckDBPyConnection, day: date) -> dict[str, int]:
    """Quarantined row counts by reason code for one day."""
    rows = con.execute(
        f"SELECT reason, count(*) FROM {QUARANTINE} WHERE partition_day = ? GROUP BY reason ORDER BY reason", [day]
    ).fetchall()
    return {reason: int(n) for reason, n in rows}
