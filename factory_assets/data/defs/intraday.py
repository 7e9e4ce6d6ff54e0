"""``intraday_features``: today's events so far, as features, every quarter of an hour.

Daily partitions stay the system of record.  This unpartitioned asset takes "now" in UTC (or the run's
:class:`IntradayConfig` ``as_of``), fetches the source's events of that UTC day and hands them to
:func:`factory_assets.data.intraday.build_intraday`, which keeps the events before the cut-off and replaces the
contract's intraday tables (``intraday_events``, ``intraday_user_item``, ``intraday_item``, ``intraday_status``, and
``item_categories``) with the daily feature views' own SQL.

Its automation condition (``INTRADAY_REFRESH``, every 15 minutes) and freshness policy (``INTRADAY_FRESHNESS``:
warn after 30 min, fail after 1 h) are applied centrally, by :func:`factory_assets.platform.automation.automate`.

The check :data:`INTRADAY_CHECK` (severity WARN, never blocking) fails when the item-category mix of today so far
drifted from yesterday's (``item_daily`` of the day before; categories only, as ``build_intraday`` explains).
"""

# no ``from __future__ import annotations``: Dagster resolves the run config class from the live annotation
from datetime import date, datetime, timedelta, timezone

import duckdb
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    DataVersion,
    Failure,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from factory_assets.data import drift
from factory_assets.data.drift_history import item_category_map
from factory_assets.data.intraday import CODE_VERSION, IntradayResult, build_intraday
from factory_assets.data.resources import EventSourceResource, WarehouseResource
from factory_assets.data.sources import TransientSourceError
from factory_assets.feature_store.contract import INTRADAY_USER_ITEM
from factory_assets.platform.keys import INTRADAY_FEATURES
from factory_assets.platform.partitions import FETCH_RETRY, GROUP_FEATURES, WAREHOUSE_POOL

INTRADAY_CHECK = "intraday_category_drift"


class IntradayConfig(Config):
    """Run-time parameters of ``intraday_features`` (tests, backfills of a past day's morning)."""

    as_of: str | None = Field(
        default=None,
        description="cut-off, ISO-8601 (e.g. 2024-11-11T12:00:00Z; no offset means UTC): the events before it are "
        "read. Its UTC day is the day built (exactly 00:00 means the day that just ended). Default: now, UTC.",
    )


CLOCK_SKEW = timedelta(minutes=5)  # how far in the future an as_of may lie (clocks of the source and of this host)


def cut_off(as_of: str | None, now: datetime | None = None) -> tuple[date, datetime]:
    """``(day, as_of)`` of a refresh: ``as_of`` parsed (naive = UTC) or ``now`` (default: the clock), in UTC; the day
    is the UTC day whose ``(00:00, 24:00]`` holds it, so midnight completes the day before (``build_intraday``'s
    interval).

    Raises:
        ValueError: ``as_of`` is not an ISO-8601 timestamp, or lies more than :data:`CLOCK_SKEW` in the future (a
            state dated tomorrow would serve as "today so far" with a negative age).
    """
    clock = now or datetime.now(timezone.utc)
    if as_of is None:
        moment = clock
    else:
        try:
            moment = datetime.fromisoformat(as_of.strip())
        except ValueError:
            raise ValueError(f"as_of {as_of!r} is not an ISO-8601 timestamp (e.g. 2024-11-11T12:00:00+00:00)") from None
    moment = moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)
    if moment > clock + CLOCK_SKEW:
        raise ValueError(f"as_of {moment.isoformat()} is in the future (now {clock.isoformat(timespec='seconds')})")
    return (moment - timedelta(microseconds=1)).date(), moment


def _metadata(result: IntradayResult, rows: int) -> dict[str, MetadataValue]:
    def number(value: float | None) -> MetadataValue:
        return MetadataValue.null() if value is None else MetadataValue.float(value)

    return {
        "day": MetadataValue.text(result.day.isoformat()),
        "as_of": MetadataValue.text(result.as_of.isoformat()),
        "n_events": MetadataValue.int(result.n_events),
        "n_rejected": MetadataValue.int(result.n_rejected),
        "dagster/row_count": MetadataValue.int(rows),
        "psi_categories": number(result.psi_categories),
        "js_distance_categories": number(result.js_distance_categories),
        "drifted": MetadataValue.bool(result.drifted),
        "reason": MetadataValue.text(result.reason),
        "data_version": MetadataValue.text(result.data_version),
    }


@asset(
    name=INTRADAY_FEATURES,
    group_name=GROUP_FEATURES,
    kinds={"duckdb", "sql"},
    pool=WAREHOUSE_POOL,
    retry_policy=FETCH_RETRY,
    code_version=CODE_VERSION,
    check_specs=[
        AssetCheckSpec(
            INTRADAY_CHECK,
            asset=INTRADAY_FEATURES,
            blocking=False,
            description=(
                f"Item categories of today so far against yesterday's item_daily: PSI <= {drift.PSI_THRESHOLD} and "
                f"Jensen-Shannon distance <= {drift.JS_DISTANCE_THRESHOLD} (WARN: a shift within hours)"
            ),
        )
    ],
    description=(
        "Today so far (UTC): the source's events of the day before the cut-off, as user_item_daily / item_daily rows "
        "computed by the daily views' own SQL (intraday_user_item, intraday_item, intraday_status). Not partitioned; "
        "refreshed every quarter of an hour."
    ),
)
def intraday_features(
    context: AssetExecutionContext, config: IntradayConfig, event_source: EventSourceResource, warehouse: WarehouseResource
) -> MaterializeResult:
    try:
        day, as_of = cut_off(config.as_of)
    except ValueError as exc:
        raise Failure(description=str(exc), allow_retries=False) from None
    source = event_source.source_name
    try:
        batch = event_source.event_source.fetch_day(day)
        events, source_rejected = batch.events, len(batch.quarantined) + len(batch.undated)
    except TransientSourceError as exc:
        if context.retry_number < FETCH_RETRY.max_retries:
            context.log.warning(f"transient source failure on attempt {context.retry_number + 1}: {exc}")
            raise
        raise Failure(description=f"intraday_features {day}: source {source!r} kept failing: {exc}",
                      allow_retries=False) from None
    except Exception as exc:  # nothing landed yet, an unreadable source: one line naming the day, no traceback soup
        raise Failure(description=f"intraday_features {day}: no events from source {source!r} "
                      f"({type(exc).__name__}: {exc})", allow_retries=False) from None
    categories = item_category_map(event_source.event_source)
    try:
        with warehouse.connect() as con:
            result = build_intraday(con, day, as_of, events, categories, source_rejected=source_rejected)
            rows = int(con.execute(f"SELECT count(*) FROM {INTRADAY_USER_ITEM}").fetchone()[0])
    except duckdb.IOException as exc:
        if "lock" in str(exc).lower() and context.retry_number < FETCH_RETRY.max_retries:
            raise  # another process holds the warehouse file: worth the retry
        raise Failure(description=f"intraday_features {day}: the warehouse cannot be written: {exc}",
                      allow_retries=False) from None  # unwritable or unreadable: retrying would only take minutes
    except Exception as exc:
        raise Failure(description=f"intraday_features {day}: {type(exc).__name__}: {exc}", allow_retries=False) from exc
    context.log.info(f"intraday {day} before {as_of.isoformat()}: {result.n_events} events, {rows} user-item rows; "
                     f"{result.reason}")
    return MaterializeResult(
        data_version=DataVersion(result.data_version),
        metadata=_metadata(result, rows),
        check_results=[
            AssetCheckResult(
                check_name=INTRADAY_CHECK,
                passed=not result.drifted,
                severity=AssetCheckSeverity.WARN,
                description=result.reason,
                metadata={"drifted": result.drifted,
                          "psi_categories": MetadataValue.null() if result.psi_categories is None
                          else MetadataValue.float(result.psi_categories)},
            )
        ],
    )
