"""Feature store partitions: the daily feature views, and the online (serving) copy of the latest values."""


import hashlib
from datetime import date, datetime, time, timedelta, timezone

from dagster import AssetDep, AssetExecutionContext, DataVersion, MaterializeResult, TimeWindowPartitionMapping, asset

from factory_assets.platform.partitions import DAILY, GROUP_FEATURES, SINGLE_RUN, WAREHOUSE_POOL, for_each_day
from factory_assets.feature_store import retrieval, store, views
from factory_assets.data.resources import WarehouseResource
from factory_assets.data.warehouse import RAW_EVENTS


def _build_view(context: AssetExecutionContext, warehouse: WarehouseResource, view: str) -> MaterializeResult:
    """(Re)build the run's day of a feature view, or each day of a range run in order."""
    return for_each_day(context, lambda day: _build_view_day(warehouse, view, day))


def _build_view_day(warehouse: WarehouseResource, view: str, day: date) -> MaterializeResult:
    """(Re)build one day of a feature view; derived views also report the input days they found missing."""
    with warehouse.connect() as con:
        version, rows = views.build_view_partition(con, view, day)
        missing = views.missing_inputs(con, view, day)
    return MaterializeResult(
        data_version=DataVersion(version),
        metadata={"dagster/row_count": rows, "data_version": version, "missing_inputs": [d.isoformat() for d in missing]},
    )


@asset(
    name=store.USER_ITEM_DAILY,
    partitions_def=DAILY,
    deps=[RAW_EVENTS],
    group_name=GROUP_FEATURES,
    kinds={"duckdb", "sql"},
    pool=WAREHOUSE_POOL,
    backfill_policy=SINGLE_RUN,
    code_version=store.FEATURE_CODE_VERSION,
    description="Feature view (entity user x item, day): counts by event type, conversions, weighted strength.",
)
def user_item_daily(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
    return _build_view(context, warehouse, store.USER_ITEM_DAILY)


@asset(
    name=store.ITEM_DAILY,
    partitions_def=DAILY,
    deps=[RAW_EVENTS],
    group_name=GROUP_FEATURES,
    kinds={"duckdb", "sql"},
    pool=WAREHOUSE_POOL,
    backfill_policy=SINGLE_RUN,
    code_version=store.FEATURE_CODE_VERSION,
    description="Feature view (entity item, day): popularity as distinct users, converters and events.",
)
def item_daily(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
    return _build_view(context, warehouse, store.ITEM_DAILY)


@asset(
    name=views.USER_FEATURES,
    partitions_def=DAILY,
    deps=[RAW_EVENTS],
    group_name=GROUP_FEATURES,
    kinds={"duckdb", "sql"},
    pool=WAREHOUSE_POOL,
    backfill_policy=SINGLE_RUN,
    code_version=views.DERIVED_CODE_VERSION,
    description="Feature view (entity user, day): events, conversions, distinct items, value, last event.",
)
def user_features(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
    return _build_view(context, warehouse, views.USER_FEATURES)


@asset(
    name=views.ITEM_FEATURES,
    partitions_def=DAILY,
    deps=[AssetDep(store.ITEM_DAILY, partition_mapping=TimeWindowPartitionMapping(start_offset=-views.ITEM_FEATURES_LOOKBACK))],
    group_name=GROUP_FEATURES,
    kinds={"duckdb", "sql"},
    pool=WAREHOUSE_POOL,
    backfill_policy=SINGLE_RUN,
    code_version=views.DERIVED_CODE_VERSION,
    description="Feature view (entity item, day): users, converters and the 7-day popularity trend "
    f"(reads the {views.ITEM_FEATURES_LOOKBACK + 1} item_daily partitions ending on the day).",
)
def item_features(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
    return _build_view(context, warehouse, views.ITEM_FEATURES)


@asset(
    name="online_features",
    partitions_def=DAILY,
    deps=[views.USER_FEATURES, views.ITEM_FEATURES],
    group_name=GROUP_FEATURES,
    kinds={"duckdb"},
    pool=WAREHOUSE_POOL,
    backfill_policy=SINGLE_RUN,
    code_version="1",
    description="The serving copy of user_features and item_features: the latest value per entity as of the end "
    "of the partition's day, computed by the same code as training frames (no training/serving skew).",
)
def online_features(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
    return for_each_day(context, lambda day: _online_features_day(warehouse, day))


def _online_features_day(warehouse: WarehouseResource, day: date) -> MaterializeResult:
    """The serving copy as of the end of ``day`` (a range run writes each day in turn: the last one stays)."""
    as_of = datetime.combine(day + timedelta(days=1), time(0), tzinfo=timezone.utc)  # day D is complete
    with warehouse.connect() as con:
        manifests = {view: retrieval.materialize_online(con, view, as_of) for view in (views.USER_FEATURES, views.ITEM_FEATURES)}
    digest = hashlib.sha256("|".join(m["feature_version"] for m in manifests.values()).encode()).hexdigest()
    return MaterializeResult(
        data_version=DataVersion(digest),
        metadata={
            "as_of": as_of.isoformat(),
            **{f"{view}_rows": m["row_count"] for view, m in manifests.items()},
            **{f"{view}_version": m["feature_version"] for view, m in manifests.items()},
        },
    )
