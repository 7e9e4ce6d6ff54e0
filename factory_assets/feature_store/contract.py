"""The feature store's contract: the one thing the DataOps and the MLOps halves both read.

The DataOps code location writes these tables; the MLOps code location reads them and declares the DataOps
assets as external asset specs under the same keys (:data:`DATA_ASSET_KEYS`), so the lineage graph is one.
Nothing here imports either half.

Named, versioned views (DuckDB tables in the warehouse, one partition per UTC day):

==========================  ==============================================================================
``raw_events``              validated events (``partition_day`` DATE, ``event_id``, ``user_id``, ``item_id``,
                            ``event_type``, ``ts`` TIMESTAMPTZ, ``quantity`` BIGINT, ``value`` DOUBLE)
``user_item_daily``         user x item daily interactions (:mod:`factory_assets.feature_store.store`)
``item_daily``              item daily counts
``user_features``           derived user view (:mod:`factory_assets.feature_store.views`)
``item_features``           derived item view (14-day popularity trend)
``behaviour_drift_history`` the drift monitor's verdict per day (``partition_day``, ``drifted``, metrics)
``partition_ledger``        one row per written partition: ``asset``, ``partition_day``, ``data_version`` (hex
                            sha256 of the partition's content or inputs), ``row_count``, ``written_at`` (UTC)
``item_categories``         the source's item catalogue: ``item_id``, ``category`` (absent: no categories)
``intraday_user_item``      today so far (the intraday path, :mod:`factory_assets.data.intraday`): the
``intraday_item``           ``user_item_daily`` / ``item_daily`` rows of the events with ``ts <`` its ``as_of``
``intraday_status``         one row: ``day``, ``as_of`` (UTC), ``n_events``, ``data_version``, the category
                            drift of today so far against yesterday (``psi_categories``, ``drifted``)
==========================  ==============================================================================

The ledger is how a reader tells a complete, empty day (``row_count = 0``) from a missing one (no row), and
how a model's manifest (its input partitions and their data versions) is checked for staleness.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, timedelta, timezone

import duckdb
import pandas as pd

from factory_assets.feature_store import storage

from factory_assets.platform.keys import (  # noqa: F401 (the contract's names)
    BEHAVIOUR_DRIFT,
    DAILY_DATA_KEYS,
    ITEM_DAILY,
    ITEM_FEATURES,
    ONLINE_FEATURES,
    RAW_EVENTS,
    USER_FEATURES,
    USER_ITEM_DAILY,
)

CONTRACT_VERSION = "1"  # bump when a table, column or data-version rule below changes meaning

# Asset keys (and table names) of the daily partitions the DataOps location materialises: one spelling, in
# platform.keys.  (Its unpartitioned ``intraday_features`` is not among them: the MLOps location declares it on its
# own, unpartitioned, for ``live_state``, which reads its tables, ``intraday_*`` below.)
DATA_ASSET_KEYS: tuple[str, ...] = DAILY_DATA_KEYS
DATA_ASSET_GROUPS: Mapping[str, str] = {  # group names as the DataOps location shows them
    RAW_EVENTS: "raw", USER_ITEM_DAILY: "features", ITEM_DAILY: "features", USER_FEATURES: "features",
    ITEM_FEATURES: "features", ONLINE_FEATURES: "features", BEHAVIOUR_DRIFT: "monitoring",
}

# Tables behind the views.
LEDGER = "partition_ledger"
DRIFT_HISTORY = "behaviour_drift_history"
ERASURE_LOG = "erasure_log"  # one row per right-to-erasure request: ``days`` = comma-separated ISO days it changed
ITEM_CATEGORIES = "item_categories"
INTRADAY_EVENTS = "intraday_events"  # the intraday path's staging copy of today's events (raw_events' columns)
INTRADAY_USER_ITEM = "intraday_user_item"
INTRADAY_ITEM = "intraday_item"
INTRADAY_STATUS = "intraday_status"

LEDGER_DDL = f"""CREATE TABLE IF NOT EXISTS {LEDGER} (
        asset VARCHAR NOT NULL, partition_day DATE NOT NULL, data_version VARCHAR NOT NULL,
        row_count BIGINT NOT NULL, written_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (asset, partition_day))"""
storage.declare(LEDGER, ("asset", "partition_day"))


def record_partition(con: duckdb.DuckDBPyConnection, asset: str, day: date, data_version: str, row_count: int) -> None:
    """Upsert the ledger row of ``(asset, day)`` (inside the writer's :func:`storage.transaction`; DataOps only)."""
    storage.clear(con, LEDGER, asset=asset, partition_day=day)
    con.execute(
        f"INSERT INTO {storage.into(con, LEDGER)} VALUES (?, ?, ?, ?, ?)",
        [asset, day, data_version, int(row_count), datetime.now(timezone.utc)],
    )


def ledger(con: duckdb.DuckDBPyConnection, asset: str, start: date, end: date) -> pd.DataFrame:
    """Ledger rows of ``asset`` for the inclusive day range: ``partition_day`` (``datetime.date``),
    ``data_version`` (str), ``row_count`` (int64), oldest first."""
    frame = con.execute(
        f"SELECT partition_day, data_version, row_count FROM {LEDGER} "
        "WHERE asset = ? AND partition_day BETWEEN ? AND ? ORDER BY partition_day",
        [asset, start, end],
    ).df()
    frame["partition_day"] = pd.to_datetime(frame["partition_day"]).dt.date
    return frame


def manifest_inputs(manifest: dict) -> list[dict]:
    """Every input partition a model manifest names, once: the window's and its long purchase history's
    (``[{"asset", "partition", "data_version", "row_count"}]``, window first)."""
    seen, out = set(), []
    for entry in manifest.get("window", {}).get("inputs", []) + ((manifest.get("history") or {}).get("inputs") or []):
        key = (entry["asset"], entry["partition"])
        if key not in seen:
            seen.add(key)
            out.append(entry)
    return out


def stale_inputs(con: duckdb.DuckDBPyConnection, manifest: dict) -> list[dict]:
    """Input partitions of a model manifest whose data version changed (or vanished) since it was trained.

    Returns:
        ``[{"asset", "partition", "trained_on", "now"}]`` (``now`` is None for a deleted partition); empty
        when the model is up to date with its inputs.
    """
    inputs = pd.DataFrame(manifest_inputs(manifest))
    if inputs.empty:
        return []
    current = con.execute(f"SELECT asset, partition_day, data_version FROM {LEDGER}").df()
    current["partition"] = pd.to_datetime(current["partition_day"]).dt.date.astype(str)
    merged = inputs.merge(current[["asset", "partition", "data_version"]], on=["asset", "partition"], how="left", suffixes=("", "_now"))
    changed = merged[merged["data_version"] != merged["data_version_now"]]
    return [
        {"asset": r.asset, "partition": r.partition, "trained_on": r.data_version,
         "now": None if pd.isna(r.data_version_now) else r.data_version_now}
        for r in changed.itertuples(index=False)
    ]


def erased_days(con: duckdb.DuckDBPyConnection) -> set[date]:
    """Every UTC day whose raw events an erasure request changed (empty when nothing was ever erased)."""
    if not table_exists(con, ERASURE_LOG):
        return set()
    rows = con.execute(f"SELECT days FROM {ERASURE_LOG}").fetchall()
    return {date.fromisoformat(d) for (days,) in rows for d in days.split(",") if d}


def change_point(verdicts: Mapping[date, bool], start: date, end: date) -> date | None:
    """First day of the latest run of consecutive drifted days in ``start..end`` (inclusive), or None.

    ``verdicts`` maps a UTC day to its drift verdict (days without a verdict count as not drifted).  The
    day is the first of the current behaviour *regime*: the candidate down-weights the days before it
    (``ModelParams.regime_start``).  A run that starts on ``start`` itself is returned as None: the whole
    window is then already the new regime, there is nothing older to down-weight.
    """
    latest = next((d for d in sorted(verdicts, reverse=True) if start <= d <= end and verdicts[d]), None)
    if latest is None:
        return None
    first = latest
    while verdicts.get(first - timedelta(days=1), False) and first - timedelta(days=1) >= start:
        first -= timedelta(days=1)
    return None if first <= start else first


def regime_start(con: duckdb.DuckDBPyConnection, start: date, end: date) -> date | None:
    """The drift monitor's change point inside the window ``start..end`` (:func:`change_point` over
    :data:`DRIFT_HISTORY`).

    None when :data:`DRIFT_HISTORY` does not exist yet (the monitor never ran) or no day of the window drifted.
    """
    if not table_exists(con, DRIFT_HISTORY):
        return None
    rows = con.execute(
        f"SELECT partition_day, drifted FROM {DRIFT_HISTORY} WHERE partition_day BETWEEN ? AND ?", [start, end]
    ).fetchall()
    return change_point({day: bool(flag) for day, flag in rows}, start, end)


def table_exists(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    """True when ``table`` (a name from code) exists in the warehouse."""
    return bool(con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]).fetchone()[0])


def read_item_categories(con: duckdb.DuckDBPyConnection) -> pd.Series | None:
    """item id -> category (both str, sorted by item id), or None when the source has no categories."""
    if not table_exists(con, ITEM_CATEGORIES):
        return None
    frame = con.execute(f"SELECT item_id, category FROM {ITEM_CATEGORIES} ORDER BY item_id").df()
    return None if frame.empty else pd.Series(frame["category"].astype(str).to_numpy(), index=frame["item_id"].astype(str).to_numpy())


def read_intraday(con: duckdb.DuckDBPyConnection) -> tuple[dict, pd.DataFrame] | None:
    """The intraday path's latest state: ``(status, rows)`` or None when it never ran.

    ``status``: ``day`` (date), ``as_of`` (UTC datetime: rows hold the events before it), ``n_events``,
    ``data_version``, ``psi_categories`` (float or None), ``drifted`` (bool); ``rows``: ``intraday_user_item``
    (``user_item_daily``'s columns, ``day`` as ``datetime.date``).
    """
    if not table_exists(con, INTRADAY_STATUS):
        return None
    status = con.execute(f"SELECT * FROM {INTRADAY_STATUS}").df()
    if status.empty:
        return None
    row = status.iloc[0].to_dict()
    row["day"] = pd.Timestamp(row["day"]).date()
    row["as_of"] = pd.Timestamp(row["as_of"]).tz_convert("UTC").to_pydatetime()
    row["psi_categories"] = None if pd.isna(row["psi_categories"]) else float(row["psi_categories"])
    row["drifted"] = bool(row["drifted"])
    row["n_events"] = int(row["n_events"])
    rows = con.execute(f"SELECT * FROM {INTRADAY_USER_ITEM} ORDER BY user_id, item_id").df()
    rows["day"] = pd.to_datetime(rows["day"]).dt.date
    return row, rows
