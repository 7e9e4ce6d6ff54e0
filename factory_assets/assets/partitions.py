"""The one daily partitions definition (UTC days) and the rolling training window mapping."""

from __future__ import annotations

from datetime import date, timedelta

from dagster import (
    AssetExecutionContext,
    Backoff,
    BackfillPolicy,
    DailyPartitionsDefinition,
    Jitter,
    RetryPolicy,
    TimeWindowPartitionMapping,
)

from factory_assets import settings

DAILY = DailyPartitionsDefinition(start_date=settings.partition_start(), timezone="UTC")
WINDOW_DAYS = settings.window_days()
HOLDOUT_DAYS = settings.HOLDOUT_DAYS
# Partition D of a windowed asset reads the WINDOW_DAYS days ending on D (inclusive).
ROLLING_WINDOW = TimeWindowPartitionMapping(start_offset=-(WINDOW_DAYS - 1), end_offset=0)

# Every step that opens the DuckDB file shares this pool (limit 1 in dagster.yaml): DuckDB lets no other
# process open the file while one holds a read-write connection.
WAREHOUSE_POOL = "warehouse"

# Transient source failures: exponential back-off (0.5 s, 1 s, 2 s, 4 s) with +/- jitter.
FETCH_RETRY = RetryPolicy(max_retries=4, delay=0.5, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS)
ONE_RUN_PER_PARTITION = BackfillPolicy.multi_run(1)

GROUP_RAW = "raw"
GROUP_FEATURES = "features"
GROUP_MODELS = "models"
GROUP_SERVING = "serving"


def partition_day(context: AssetExecutionContext) -> date:
    """The UTC day of the running partition."""
    return date.fromisoformat(context.partition_key)


def window_start(end: date) -> date:
    """First day of the training window that ends on ``end``."""
    return end - timedelta(days=WINDOW_DAYS - 1)
