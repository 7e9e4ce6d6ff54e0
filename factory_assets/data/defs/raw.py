"""``raw_events``: one UTC day of events from the configured source, validated, quarantined, stored atomically.

A range run (``--partition-range A...B``) ingests each day of it in turn, one atomic write per day.
"""

from datetime import date

import duckdb
from dagster import AssetExecutionContext, DataVersion, Failure, MaterializeResult, MetadataValue, asset

from factory_assets.platform.partitions import DAILY, FETCH_RETRY, GROUP_RAW, SINGLE_RUN, WAREHOUSE_POOL, for_each_day
from factory_assets.data.defs import raw_checks
from factory_assets.data.resources import EventSourceResource, WarehouseResource
from factory_assets.data.sources import PermanentSourceError, TransientSourceError
from factory_assets.data import warehouse
from factory_assets.data.ingest import ingest_day


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
def raw_events(context: AssetExecutionContext, event_source: EventSourceResource, warehouse: WarehouseResource) -> MaterializeResult:
    return for_each_day(context, lambda day: _raw_events_day(context, event_source, warehouse, day))


def _raw_events_day(context: AssetExecutionContext, event_source: EventSourceResource, store: WarehouseResource, day: date) -> MaterializeResult:
    """One day: fetch, then validate and write in one transaction (:func:`~factory_assets.data.ingest.ingest_day`),
    then the blocking checks on what was stored (a range run calls it for each day in order)."""
    try:
        batch = event_source.event_source.fetch_day(day)
    except TransientSourceError as exc:
        context.log.warning(f"transient source failure on attempt {context.retry_number + 1}: {exc}")
        raise
    except PermanentSourceError as exc:
        raise Failure(description=f"source {event_source.source_name!r} cannot be read: {exc}", allow_retries=False) from exc
    try:  # only the fetch (and a locked warehouse file) is worth a retry; anything else fails fast
        with store.connect() as con:
            result = ingest_day(con, day, batch)
            check_results = raw_checks.run_checks(con, day)
    except duckdb.IOException:
        raise
    except Exception as exc:
        raise Failure(description=f"raw_events {day}: {type(exc).__name__}: {exc}", allow_retries=False) from exc
    return MaterializeResult(
        data_version=DataVersion(result.data_version),
        check_results=check_results,
        metadata={
            "dagster/row_count": result.accepted,
            "source": event_source.source_name,
            "quarantined_rows": result.quarantined,
            "quarantine_by_reason": MetadataValue.json(result.quarantine_by_reason),
            "files": MetadataValue.md(
                "| file | sha256 | rows accepted | rows quarantined |\n|---|---|---:|---:|\n"
                + "\n".join(f"| {f.name} | `{f.sha256[:12]}` | {f.rows_accepted} | {f.rows_quarantined} |" for f in result.files)
            ) if result.files else MetadataValue.null(),
            "undated_quarantined_rows": result.undated,
            "events_by_type": MetadataValue.json(result.events_by_type),
            "distinct_users": result.distinct_users,
            "distinct_items": result.distinct_items,
            "data_version": result.data_version,
            "preview": MetadataValue.md(result.preview.to_markdown(index=False) if result.accepted else "_empty day_"),
        },
    )
