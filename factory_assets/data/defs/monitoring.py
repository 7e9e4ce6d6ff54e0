"""``behaviour_drift``: has the latest day's behaviour moved away from what the model was trained on?

Partition D compares day D of ``item_daily`` with the :data:`~factory_assets.data.drift_history.REFERENCE_DAYS`
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
metadata says so.  The map is also written to the contract's ``item_categories`` table
(:func:`factory_assets.data.intraday.write_item_categories`; nothing for a source without categories), so the
MLOps half can read it before the intraday path ever ran.
"""

from datetime import date, timedelta

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
from factory_assets.data.drift_history import REFERENCE_DAYS, assess_day, item_category_map  # noqa: F401 (item_category_map re-exported)
from factory_assets.data.intraday import write_item_categories
from factory_assets.data.resources import EventSourceResource, WarehouseResource
from factory_assets.feature_store.contract import BEHAVIOUR_DRIFT, DRIFT_HISTORY, ITEM_DAILY  # noqa: F401 (DRIFT_HISTORY re-exported)
from factory_assets.platform.partitions import DAILY, SINGLE_RUN, WAREHOUSE_POOL, for_each_day

DRIFT_CHECK = "drift_within_threshold"
GROUP_MONITORING = "monitoring"
# Partition D reads item_daily for D and the REFERENCE_DAYS days before it.
DRIFT_WINDOW = TimeWindowPartitionMapping(start_offset=-REFERENCE_DAYS, end_offset=0)


def _metrics_metadata(report: drift.DriftReport) -> dict[str, MetadataValue]:
    """The four drift metrics (rounded to 6 places; null where undefined), on the check and the materialization."""
    return {
        f"{metric}_{dist}": MetadataValue.null() if (value := report.metric(dist, metric)) is None
        else MetadataValue.float(round(value, 6))
        for dist, metric in (("items", "psi"), ("items", "js_distance"), ("categories", "psi"),
                             ("categories", "js_distance"))
    }


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
        f"Item-popularity and category drift of the day against the {REFERENCE_DAYS} days before it "
        "(population stability index, Jensen-Shannon distance), with a history."
    ),
)
def behaviour_drift(context: AssetExecutionContext, event_source: EventSourceResource, warehouse: WarehouseResource) -> MaterializeResult:
    return for_each_day(context, lambda day: _behaviour_drift_day(event_source, warehouse, day))


def _behaviour_drift_day(event_source: EventSourceResource, warehouse: WarehouseResource, day: date) -> MaterializeResult:
    """One day's verdict against the days before it (a range run assesses each day in order)."""
    categories = item_category_map(event_source.event_source)
    with warehouse.connect() as con:
        try:
            result = assess_day(con, day, categories)
        except LookupError as exc:
            raise Failure(description=str(exc), allow_retries=False) from exc
        # the catalogue the MLOps half reads (item_categories), before the intraday path ever ran; its own
        # storage.transaction, after assess_day's has closed (parquet transactions do not nest)
        write_item_categories(con, categories)
    report, reference_days, past, version = result.report, result.reference_days, result.history, result.data_version
    table = past.assign(partition_day=past["partition_day"].astype(str)).round(4)
    metrics = _metrics_metadata(report)
    return MaterializeResult(
        data_version=DataVersion(version),
        check_results=[
            AssetCheckResult(
                check_name=DRIFT_CHECK,
                passed=not report.drifted,
                severity=AssetCheckSeverity.WARN,
                description=report.reason,
                metadata={"drifted": report.drifted, **metrics},
            )
        ],
        metadata={
            "drifted": report.drifted,
            "reason": report.reason,
            **metrics,
            "thresholds": MetadataValue.json({"psi": drift.PSI_THRESHOLD, "js_distance": drift.JS_DISTANCE_THRESHOLD}),
            "distributions": MetadataValue.json([d.as_dict() for d in report.distributions]),
            "categories_known": categories is not None,
            "reference": f"{day - timedelta(days=REFERENCE_DAYS)}..{day - timedelta(days=1)} ({reference_days} days present)",
            "observations": report.current_observations,
            "history": MetadataValue.md(table.to_markdown(index=False) if len(table) else "_no history yet_"),
            "data_version": version,
        },
    )
