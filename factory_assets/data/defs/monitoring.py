"""``behaviour_drift``: has the latest day's behaviour moved away from what the model was trained on?

Partition D compares day D of ``item_daily`` with the :data:`~factory_assets.platform.partitions.WINDOW_DAYS`
days before it (D-W .. D-1: the window the previous day's candidate, normally the champion, was trained
on).  It is one SQL aggregate over ``item_daily`` (no raw events are read), then the pure metrics of
:mod:`factory_assets.data.drift` (population stability index and Jensen-Shannon distance of item popularity and,
when the source knows them, of item categories; thresholds and their sources are documented there).

What it records
---------------
* numeric metadata on every materialisation (``psi_items``, ``js_distance_items``, ``psi_categories``,
  ``js_distance_categories``): Dagster plots them per partition, which is the history in the UI;
* a warehouse table :data:`DRIFT_HISTORY` (one row per day, replaced on re-materialisation) and the last
  :data:`HISTORY_ROWS` rows of it as a Markdown table in the metadata;
* the check :data:`DRIFT_CHECK` (severity WARN, never blocking): it *fails* when the day drifted.  That
  failing check on the newest partition is the retrain signal the candidate's automation condition reads
  (``DRIFT_RETRAIN`` in :mod:`factory_assets.platform.automation`).

Item categories
---------------
Events carry only item ids.  :func:`item_category_map` asks the configured source, in this order, for an
optional ``item_category_map() -> Mapping[item_id, category]`` method (the proposed optional
``EventSource`` extension), then for the simulator's aligned ``item_ids()`` / ``item_categories()`` arrays;
a source with neither (Online Retail, MovieLens today) is assessed on item popularity only, and the
metadata says so.
"""


import hashlib
from collections.abc import Mapping
from datetime import date, datetime, timedelta, timezone

import duckdb
import pandas as pd
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetDep,
    AssetExecutionContext,
    DataVersion,
    Failure,
    MaterializeResult,
    MetadataValue,
    TimeWindowPartitionMapping,
    asset,
)

from factory_assets.data import drift
from factory_assets.platform.partitions import DAILY, SINGLE_RUN, WAREHOUSE_POOL, WINDOW_DAYS, for_each_day
from factory_assets.feature_store.store import ITEM_DAILY
from factory_assets.resources import FactoryResource
from factory_assets.data.warehouse import ledger
from factory_assets.feature_store.contract import BEHAVIOUR_DRIFT, DRIFT_HISTORY, regime_start  # noqa: F401 (re-exported)

DRIFT_CHECK = "drift_within_threshold"
GROUP_MONITORING = "monitoring"
HISTORY_ROWS = 14
# Partition D reads item_daily for D and the WINDOW_DAYS days before it.
DRIFT_WINDOW = TimeWindowPartitionMapping(start_offset=-WINDOW_DAYS, end_offset=0)

_DDL = f"""CREATE TABLE IF NOT EXISTS {DRIFT_HISTORY} (
    partition_day DATE PRIMARY KEY, reference_start DATE NOT NULL, reference_days INTEGER NOT NULL,
    observations DOUBLE NOT NULL, psi_items DOUBLE, js_distance_items DOUBLE, psi_categories DOUBLE,
    js_distance_categories DOUBLE, drifted BOOLEAN NOT NULL, reason VARCHAR NOT NULL, computed_at TIMESTAMPTZ NOT NULL)"""

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
    start = day - timedelta(days=WINDOW_DAYS)
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


def _record(con: duckdb.DuckDBPyConnection, day: date, reference_days: int, report: drift.DriftReport) -> None:
    con.execute(
        f"INSERT OR REPLACE INTO {DRIFT_HISTORY} VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            day, day - timedelta(days=WINDOW_DAYS), reference_days, report.current_observations,
            report.metric("items", "psi"), report.metric("items", "js_distance"),
            report.metric("categories", "psi"), report.metric("categories", "js_distance"),
            report.drifted, report.reason, datetime.now(timezone.utc),
        ],
    )


def _float_or_null(value: float | None) -> MetadataValue:
    return MetadataValue.null() if value is None else MetadataValue.float(round(value, 6))


def drift_data_version(day: date, inputs: pd.DataFrame, categories: Mapping[str, str] | None) -> str:
    """sha256 of the drift code version, the day, the input partitions' data versions and the category map."""
    digest = hashlib.sha256(f"{drift.DRIFT_CODE_VERSION}|{day.isoformat()}".encode())
    for row in inputs.itertuples():
        digest.update(f"|{row.partition_day}:{row.data_version}".encode())
    if categories:
        digest.update(hashlib.sha256(repr(sorted(categories.items())).encode()).digest())
    return digest.hexdigest()


@asset(
    name=BEHAVIOUR_DRIFT,
    partitions_def=DAILY,
    deps=[AssetDep(ITEM_DAILY, partition_mapping=DRIFT_WINDOW)],
    group_name=GROUP_MONITORING,
    kinds={"duckdb", "sql"},
    pool=WAREHOUSE_POOL,
    backfill_policy=SINGLE_RUN,
    code_version=drift.DRIFT_CODE_VERSION,
    check_specs=[
        AssetCheckSpec(
            DRIFT_CHECK,
            asset=BEHAVIOUR_DRIFT,
            blocking=False,
            description=(
                f"PSI <= {drift.PSI_THRESHOLD} and Jensen-Shannon distance <= {drift.JS_DISTANCE_THRESHOLD} for item "
                "popularity and categories; a failure (WARN) triggers an early retrain of the candidate"
            ),
        )
    ],
    description=(
        f"Item-popularity and category drift of the day against the {WINDOW_DAYS} days before it "
        "(population stability index, Jensen-Shannon distance), with a history."
    ),
)
def behaviour_drift(context: AssetExecutionContext, factory: FactoryResource) -> MaterializeResult:
    return for_each_day(context, lambda day: _behaviour_drift_day(factory, day))


def _behaviour_drift_day(factory: FactoryResource, day: date) -> MaterializeResult:
    """One day's verdict against the days before it (a range run assesses each day in order)."""
    categories = item_category_map(factory.event_source)
    with factory.warehouse() as con:
        ensure_schema(con)
        current, reference, inputs = read_counts(con, day)
        if day not in set(inputs["partition_day"]):
            raise Failure(description=f"item_daily {day} is missing; materialise the day's features first", allow_retries=False)
        report = drift.assess(current, reference, categories)
        reference_days = int((inputs["partition_day"] < day).sum())
        _record(con, day, reference_days, report)
        past = history(con, day)
    version = drift_data_version(day, inputs, categories)
    table = past.assign(partition_day=past["partition_day"].astype(str)).round(4)
    return MaterializeResult(
        data_version=DataVersion(version),
        check_results=[
            AssetCheckResult(
                check_name=DRIFT_CHECK,
                passed=not report.drifted,
                severity=AssetCheckSeverity.WARN,
                description=report.reason,
                metadata={
                    "drifted": report.drifted,
                    "psi_items": _float_or_null(report.metric("items", "psi")),
                    "js_distance_items": _float_or_null(report.metric("items", "js_distance")),
                    "psi_categories": _float_or_null(report.metric("categories", "psi")),
                    "js_distance_categories": _float_or_null(report.metric("categories", "js_distance")),
                },
            )
        ],
        metadata={
            "drifted": report.drifted,
            "reason": report.reason,
            "psi_items": _float_or_null(report.metric("items", "psi")),
            "js_distance_items": _float_or_null(report.metric("items", "js_distance")),
            "psi_categories": _float_or_null(report.metric("categories", "psi")),
            "js_distance_categories": _float_or_null(report.metric("categories", "js_distance")),
            "thresholds": MetadataValue.json({"psi": drift.PSI_THRESHOLD, "js_distance": drift.JS_DISTANCE_THRESHOLD}),
            "distributions": MetadataValue.json([d.as_dict() for d in report.distributions]),
            "categories_known": categories is not None,
            "reference": f"{day - timedelta(days=WINDOW_DAYS)}..{day - timedelta(days=1)} ({reference_days} days present)",
            "observations": report.current_observations,
            "history": MetadataValue.md(table.to_markdown(index=False) if len(table) else "_no history yet_"),
            "data_version": version,
        },
    )
