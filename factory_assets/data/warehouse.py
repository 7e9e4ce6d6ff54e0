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


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create the warehouse tables if they do not exist (idempotent)."""
    for statement in DDL:
        con.execute(statement)


def frame_data_version(frame: pd.DataFrame, salt: str = "") -> str:
    """A content hash of a frame (column names, dtypes and values, row order as given), hex sha256.

    Callers sort rows first so that equal content gives an equal version.
    """
    digest = hashlib.sha256(salt.encode())
    digest.update("|".join(f"{c}:{frame[c].dtype}" for c in frame.columns).encode())
    if len(frame):
        digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
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
        events: validated events (:data:`EVENT_COLUMNS`, schema dtypes), all with ``ts`` on ``day``.
        quarantined: the day's rejected rows (:data:`QUARANTINE_COLUMNS`).
        undated: rejected rows of no day; each ``(source_sha256, source_line, reason)`` is stored once
            (with ``partition_day`` NULL), however many days read the same file.
        files: what each landed file gave this day (``ingestion_log``, keyed by file sha256 and day).

    Raises:
        duckdb.Error: the transaction is rolled back and the previous version of the day stays.
    """
    ordered = events.loc[:, list(EVENT_COLUMNS)].sort_values(["event_id"], kind="stable").reset_index(drop=True)
    version = frame_data_version(ordered)
    q = quarantined.loc[:, list(QUARANTINE_COLUMNS)].copy()
    u = (undated if undated is not None else quarantined.iloc[0:0]).loc[:, list(QUARANTINE_COLUMNS)].copy()
    columns = ", ".join(QUARANTINE_COLUMNS)
    now = datetime.now(timezone.utc)
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(f"DELETE FROM {RAW_EVENTS} WHERE partition_day = ?", [day])
        con.execute(f"DELETE FROM {QUARANTINE} WHERE partition_day = ?", [day])
        con.execute(f"DELETE FROM {INGESTION_LOG} WHERE partition_day = ?", [day])
        con.register("_new_events", ordered)
        con.execute(
            f"INSERT INTO {RAW_EVENTS} SELECT ?::DATE, {', '.join(EVENT_COLUMNS)} FROM _new_events", [day]
        )
        con.register("_new_quarantine", q)
        con.execute(f"INSERT INTO {QUARANTINE} SELECT ?::DATE, {columns} FROM _new_quarantine", [day])
        con.register("_new_undated", u)
        con.execute(
            f"INSERT INTO {QUARANTINE} SELECT NULL, {columns} FROM _new_undated n WHERE NOT EXISTS ("
            f"SELECT 1 FROM {QUARANTINE} q WHERE q.partition_day IS NULL AND q.source_sha256 IS NOT DISTINCT FROM "
            "n.source_sha256 AND q.source_line IS NOT DISTINCT FROM n.source_line AND q.reason = n.reason)"
        )
        for f in files:
            con.execute(
                f"INSERT INTO {INGESTION_LOG} VALUES (?, ?, ?, ?, ?, ?, ?)",
                [f.sha256, day, f.name, f.size_bytes, f.rows_accepted, f.rows_quarantined, now],
            )
        record_partition(con, RAW_EVENTS, day, version, len(ordered))
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    finally:
        for view in ("_new_events", "_new_quarantine", "_new_undated"):
            try:
                con.unregister(view)
            except duckdb.Error:
                pass
    return version


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
