"""Feature store partitions: ``user_item_daily`` and ``item_daily``, each from the same day's raw events."""


from dagster import AssetExecutionContext, DataVersion, MaterializeResult, asset

from factory_assets.assets.partitions import DAILY, GROUP_FEATURES, WAREHOUSE_POOL, partition_day
from factory_assets.features import store
from factory_assets.resources import FactoryResource
from factory_assets.warehouse import RAW_EVENTS


def _build(context: AssetExecutionContext, factory: FactoryResource, view: str) -> MaterializeResult:
    day = partition_day(context)
    with factory.warehouse() as con:
        version, rows = store.build_partition(con, view, day)
    return MaterializeResult(
        data_version=DataVersion(version),
        metadata={"dagster/row_count": rows, "data_version": version, "feature_code_version": store.FEATURE_CODE_VERSION},
    )


@asset(
    name=store.USER_ITEM_DAILY,
    partitions_def=DAILY,
    deps=[RAW_EVENTS],
    group_name=GROUP_FEATURES,
    kinds={"duckdb", "sql"},
    pool=WAREHOUSE_POOL,
    code_version=store.FEATURE_CODE_VERSION,
    description="Feature view (entity user x item, day): counts by event type, conversions, weighted strength.",
)
def user_item_daily(context: AssetExecutionContext, factory: FactoryResource) -> MaterializeResult:
    return _build(context, factory, store.USER_ITEM_DAILY)


@asset(
    name=store.ITEM_DAILY,
    partitions_def=DAILY,
    deps=[RAW_EVENTS],
    group_name=GROUP_FEATURES,
    kinds={"duckdb", "sql"},
    pool=WAREHOUSE_POOL,
    code_version=store.FEATURE_CODE_VERSION,
    description="Feature view (entity item, day): popularity as distinct users, converters and events.",
)
def item_daily(context: AssetExecutionContext, factory: FactoryResource) -> MaterializeResult:
    return _build(context, factory, store.ITEM_DAILY)
