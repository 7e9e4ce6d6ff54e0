"""The drift monitor's day: item-popularity counts from the feature store, the verdict, and its history table.

Pure persistence and SQL around :mod:`factory_assets.data.drift` (the metrics); the ``behaviour_drift`` asset
(:mod:`factory_assets.data.defs.monitoring`) calls :func:`assess_day` and maps its result to a materialization.
Reference: the ``reference_days`` days before the day (D-W .. D-1), W = :data:`REFERENCE_DAYS`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import duckdb
import pandas as pd

from factory_assets.data import drift
from factory_assets.feature_store import storage
from factory_assets.feature_store.contract import DRIFT_HISTORY, ITEM_DAILY, ledger
from factory_assets.platform.settings import DEFAULT_WINDOW_DAYS

REFERENCE_DAYS = DEFAULT_WINDOW_DAYS  # the window the previous day's candidate (normally the champion) was trained on
HISTORY_ROWS = 14

_DDL = f"""CREATE TABLE IF NOT EXISTS {DRIFT_HISTORY} (
    partition_day DATE PRIMARY KEY, reference_start DATE NOT NULL, reference_days INTEGER NOT NULL,
    observations DOUBLE NOT NULL, psi_items DOUBLE, js_distance_items DOUBLE, psi_categories DOUBLE,
    js_distance_categories DOUBLE, drifted BOOLEAN NOT NULL, reason VARCHAR NOT NULL, computed_at TIMESTAMPTZ NOT NULL)"""
storage.declare(DRIFT_HISTORY, ("partition_day",))

_COUNTS_SQL = f"""
SELECT item_id,
       coalesce(sum(n_users) FILTER (WHERE day = $day), 0) AS current,
       coalesce(sum(n_users) FILTER (WHERE day < $day), 0) AS reference
FROM {ITEM_DAILY} WHERE day BETWEEN $start AND $day GROUP BY item_id
"""


def item_category_map(source: object) -> dict[str, str] | None:
    """item id -> category from the source, or None when it has no categories (see the module docstring)."""
    explicit = getattr(source, "item_category_map", None)
    if callable(explicit):
        mapping = explicit()
        return {str(k): str(v) for k, v in mapping.items()} if mapping else None
    ids, cats = getattr(source, "item_ids", None), getattr(source, "item_categories", None)
    if callable(ids) and callable(cats):
        item_ids, categories = list(ids()), list(cats())
        if len(item_ids) == len(categories) and item_ids:
            return {str(i): str(c) for i, c in zip(item_ids, categories)}
    return None


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(_DDL)


def read_counts(con: duckdb.DuckDBPyConnection, day: date) -> tuple[dict[str, float], dict[str, float], pd.DataFrame]:
    """Per-item distinct users on ``day`` and summed over the reference days; the ledger rows read."""
    start = day - timedelta(days=REFERENCE_DAYS)
    frame = con.execute(_COUNTS_SQL, {"day": day, "start": start}).df()
    current = {str(r.item_id): float(r.current) for r in frame.itertuples() if r.current > 0}
    reference = {str(r.item_id): float(r.reference) for r in frame.itertuples() if r.reference > 0}
    return current, reference, ledger(con, ITEM_DAILY, start, day)


def history(con: duckdb.DuckDBPyConnection, until: date, rows: int = HISTORY_ROWS) -> pd.DataFrame:
    """The last ``rows`` recorded days up to ``until`` (newest last)."""
    frame = con.execute(
        f"SELECT partition_day, psi_items, js_distance_items, psi_categories, js_distance_categories, drifted "
        f"FROM {DRIFT_HISTORY} WHERE partition_day <= ? ORDER BY partition_day DESC LIMIT ?",
        [until, rows],
    ).df()
    return frame.iloc[::-1].reset_index(drop=True)


def record(con: duckdb.DuckDBPyConnection, day: date, reference_days: int, report: drift.DriftReport) -> None:
    """Replace ``day``'s row of :data:`DRIFT_HISTORY` (one atomic write)."""
    with storage.transaction(con):
        storage.clear(con, DRIFT_HISTORY, partition_day=day)
        con.execute(
            f"INSERT INTO {storage.into(con, DRIFT_HISTORY)} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                day, day - timedelta(days=REFERENCE_DAYS), reference_days, report.current_observations,
                report.metric("items", "psi"), report.metric("items", "js_distance"),
                report.metric("categories", "psi"), report.metric("categories", "js_distance"),
                report.drifted, report.reason, datetime.now(timezone.utc),
            ],
        )



def drift_data_version(day: date, inputs: pd.DataFrame, categories: Mapping[str, str] | None) -> str:
    """sha256 of the drift code version, the day, the input partitions' data versions and the category map."""
    digest = hashlib.sha256(f"{drift.DRIFT_CODE_VERSION}|{day.isoformat()}".encode())
    for row in inputs.itertuples():
        digest.update(f"|{row.partition_day}:{row.data_version}".encode())
    if categories:
        digest.update(hashlib.sha256(repr(sorted(categories.items())).encode()).digest())
    return digest.hexdigest()



@dataclass(frozen=True)
class DayDrift:
    """One day's drift verdict: the report, the reference days present, the recent history
    (:func:`history`), the data version (hex sha256) and whether item categories were known."""

    day: date
    report: drift.DriftReport
    reference_days: int
    history: pd.DataFrame
    data_version: str
    categories_known: bool


def assess_day(con: duckdb.DuckDBPyConnection, day: date, categories: Mapping[str, str] | None) -> DayDrift:
    """Assess ``day`` against the :data:`REFERENCE_DAYS` days before it and record it in :data:`DRIFT_HISTORY`
    (replacing an earlier verdict of the day).

    Raises:
        LookupError: ``item_daily`` of ``day`` is not materialised (the day's features come first).
    """
    ensure_schema(con)
    current, reference, inputs = read_counts(con, day)
    if day not in set(inputs["partition_day"]):
        raise LookupError(f"item_daily {day} is missing; materialise the day's features first")
    report = drift.assess(current, reference, categories)
    reference_days = int((inputs["partition_day"] < day).sum())
    record(con, day, reference_days, report)
    return DayDrift(day, report, reference_days, history(con, day), drift_data_version(day, inputs, categories),
                    categories is not None)
