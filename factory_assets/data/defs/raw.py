"""``raw_events``: one UTC day of events from the configured source, validated, quarantined, stored atomically.

A range run (``--partition-range A...B``) ingests each day of it in turn, one atomic write per day.
"""

from datetime import date

import duckdb
import pandas as pd
from dagster import AssetExecutionContext, DataVersion, Failure, MaterializeResult, MetadataValue, asset

from factory_assets.platform.partitions import DAILY, FETCH_RETRY, GROUP_RAW, SINGLE_RUN, WAREHOUSE_POOL, for_each_day
from factory_assets.data.defs import raw_checks
from factory_assets.resources import FactoryResource
from factory_assets.data.sources import PermanentSourceError, TransientSourceError
from factory_assets.data.sources.schema import validate_events
from factory_assets.data import warehouse


@asset(
    name=warehouse.RAW_EVENTS,
    partitions_def=DAILY,
    group_name=GROUP_RAW,
    kinds={"duckdb", "python"},
    pool=WAREHOUSE_POOL,
    retry_policy=FETCH_RETRY,
    backfill_policy=SINGLE_RUN,
    code_version="1",
    check_specs=raw_checks.SPECS,
    description="Interaction events of one UTC day in the common schema; rejected rows go to raw_events_quarantine.",
)
def raw_events(context: AssetExecutionContext, factory: FactoryResource) -> MaterializeResult:
    return for_each_day(context, lambda day: _raw_events_day(context, factory, day))


def _raw_events_day(context: AssetExecutionContext, factory: FactoryResource, day: date) -> MaterializeResult:
    """One day: fetch, validate, write atomically, check (a range run calls it for each day in order)."""
    try:
        batch = factory.event_source.fetch_day(day)
    except TransientSourceError as exc:
        context.log.warning(f"transient source failure on attempt {context.retry_number + 1}: {exc}")
        raise
    except PermanentSourceError as exc:
        raise Failure(description=f"source {factory.source!r} cannot be read: {exc}", allow_retries=False) from exc
    try:  # only the fetch (and a locked warehouse file) is worth a retry; anything else fails fast
        accepted, rejected = validate_events(batch.events, day)
        quarantined = pd.concat([batch.quarantined, rejected], ignore_index=True)
        with factory.warehouse() as con:
            version = warehouse.write_raw_partition(con, day, accepted, quarantined, batch.undated, batch.files)
            reasons = warehouse.quarantine_summary(con, day)
            check_results = raw_checks.run_checks(con, day)
    except duckdb.IOException:
        raise
    except Exception as exc:
        raise Failure(description=f"raw_events {day}: {type(exc).__name__}: {exc}", allow_retries=False) from exc
    by_type = accepted["event_type"].value_counts().sort_index()
    return MaterializeResult(
        data_version=DataVersion(version),
        check_results=check_results,
        metadata={
            "dagster/row_count": len(accepted),
            "source": factory.source,
            "quarantined_rows": int(len(quarantined)),
            "quarantine_by_reason": MetadataValue.json(reasons),
            "files": MetadataValue.md(
                "| file | sha256 | rows accepted | rows quarantined |\n|---|---|---:|---:|\n"
                + "\n".join(f"| {f.name} | `{f.sha256[:12]}` | {f.rows_accepted} | {f.rows_quarantined} |" for f in batch.files)
            ) if batch.files else MetadataValue.null(),
            "undated_quarantined_rows": int(len(batch.undated)),
            "events_by_type": MetadataValue.json({k: int(v) for k, v in by_type.items()}),
            "distinct_users": int(accepted["user_id"].nunique()),
            "distinct_items": int(accepted["item_id"].nunique()),
            "data_version": version,
            "preview": MetadataValue.md(accepted.head(5).to_markdown(index=False) if len(accepted) else "_empty day_"),
        },
    )
