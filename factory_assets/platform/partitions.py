"""The one daily partitions definition (UTC days), the rolling training window mapping, and partition ranges.

Ranges (``dagster asset materialize --partition-range A...B``, or a UI backfill):

* The DataOps assets (``raw_events``, the feature views, ``online_features``, ``behaviour_drift``) have
  :data:`SINGLE_RUN` (``BackfillPolicy.single_run()``, which the CLI requires of every selected asset), so a range
  is ONE run that processes every day of ``context.partition_key_range`` in order with :func:`for_each_day`: the
  same per-day function as a single-partition run, one atomic partition write per day, each day's metadata on
  that day's materialisation.
* The ML assets (``training_window``, ``candidate_model``, ``served_model``, ``shadow_evaluation``) train and
  promote one day per run, in order, against the champion of the day before: :data:`ONE_RUN_PER_PARTITION`, so a
  UI backfill launches one run per day; the CLI refuses a range that selects them (Dagster's own check), and
  :func:`partition_day` fails a run over several days (``materialize()`` with range tags) with one line that
  names the ``factory run ... --backtest`` command doing that.

A single-partition run (``--partition D``, ``materialize(partition_key=...)``, the jobs and automation) is
unchanged: both helpers read ``context.partition_key`` exactly as before.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from datetime import date, timedelta

from dagster import (
    AssetCheckResult,
    AssetExecutionContext,
    Backoff,
    BackfillPolicy,
    DailyPartitionsDefinition,
    DataVersion,
    Failure,
    Jitter,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    TimeWindowPartitionMapping,
)

from factory_assets.platform import settings

# The partitions definition is the shape of the asset graph, so its first day is the one setting read when
# definitions load (FACTORY_PARTITION_START, through settings); everything a run does is resolved at run time.
DAILY = DailyPartitionsDefinition(start_date=settings.partition_start(), timezone="UTC")
# The graph's window: the lineage of training_window (and automation's look-back) spans this many days.  The
# window a run actually reads is its own configuration (ModelPolicy.window_days; default FACTORY_WINDOW_DAYS
# or the source's, resolved at run time), checked against the ledger by the step itself.
WINDOW_DAYS = settings.DEFAULT_WINDOW_DAYS
HOLDOUT_DAYS = settings.HOLDOUT_DAYS
# Partition D of a windowed asset depends on the WINDOW_DAYS days ending on D (inclusive).
ROLLING_WINDOW = TimeWindowPartitionMapping(start_offset=-(WINDOW_DAYS - 1), end_offset=0)

# Every step that opens the DuckDB file shares this pool (limit 1 in dagster.yaml): DuckDB lets no other
# process open the file while one holds a read-write connection.
WAREHOUSE_POOL = "warehouse"

# Transient source failures: exponential back-off (0.5 s, 1 s, 2 s, 4 s) with +/- jitter.
FETCH_RETRY = RetryPolicy(max_retries=4, delay=0.5, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS)
# The ML assets (training_window, candidate_model, served_model, shadow_evaluation) train one day per run: a
# backfill from the UI launches one run per day (the CLI's --partition-range refuses them: it needs single_run)
ONE_RUN_PER_PARTITION = BackfillPolicy.multi_run(1)
# Every asset: a partition range is one run (what `dagster asset materialize --partition-range` requires).
SINGLE_RUN = BackfillPolicy.single_run()

GROUP_RAW = "raw"
GROUP_FEATURES = "features"
GROUP_MODELS = "models"
GROUP_SERVING = "serving"


def _single_partition(context: AssetExecutionContext) -> bool:
    """A run of one partition key (not a range).  A plain stand-in context with only ``partition_key`` (the
    benchmarks' direct calls of the asset bodies, ``benchmarks/_common.py``) counts as one."""
    return getattr(context, "has_partition_key", True)


def partition_day(context: AssetExecutionContext) -> date:
    """The UTC day of the running partition (assets that run one day per run: the ML assets).

    A range run of one day (``D...D``) is that day.

    Raises:
        dagster.Failure: in a run over a range of several days, with one line naming the ``factory run`` command
            that trains those days one run each, in order.
    """
    if _single_partition(context):
        return date.fromisoformat(context.partition_key)
    key_range = context.partition_key_range
    if key_range.start == key_range.end:
        return date.fromisoformat(key_range.start)
    first, last = date.fromisoformat(key_range.start), date.fromisoformat(key_range.end)
    start = max(window_start(first), DAILY.start.date())
    raise Failure(
        description=f"{context.asset_key.to_user_string()} runs one day at a time (each day's candidate is judged "
        f"against the champion the day before left), not the range {key_range.start}...{key_range.end}: run "
        f"`factory run --start {start} "
        f"--end {last} --backtest` instead (one daily_training run per day, in order; --start leaves {first} "
        f"its {WINDOW_DAYS}-day window)",
        allow_retries=False,
    )


def partition_days(context: AssetExecutionContext) -> list[date]:
    """Every UTC day of the run, oldest first: the one partition, or each day of a range run."""
    if _single_partition(context):
        return [date.fromisoformat(context.partition_key)]
    return [date.fromisoformat(key) for key in context.partition_keys]


def for_each_day(context: AssetExecutionContext, build: Callable[[date], MaterializeResult]) -> MaterializeResult:
    """Materialise every day of the run with ``build(day)``, in order (the DataOps assets).

    A single-partition run returns ``build(day)`` itself.  A range run calls it once per day, oldest first
    (each call is that day's own atomic write; a failure stops the run there, the days before it stay
    stored), gives each day's materialisation that day's metadata (``context.add_asset_metadata``), and
    returns one result: ``partition_range`` metadata, a data version that is the sha256 of the days' versions
    (Dagster keeps one per run; each day's own is its ``data_version`` metadata where the asset records it) and
    each check combined over the days (:func:`combine_check_results`).
    """
    if _single_partition(context):
        return build(partition_day(context))
    days = partition_days(context)
    label = f"{days[0]}...{days[-1]}"
    per_day: list[tuple[date, MaterializeResult]] = []
    for day in days:
        try:
            result = build(day)
        except Exception:
            context.log.error(f"{context.asset_key.to_user_string()} {day} failed; the {len(per_day)} earlier day(s) "
                              f"of {label} are stored")
            raise
        context.add_asset_metadata(dict(result.metadata or {}), partition_key=day.isoformat())
        per_day.append((day, result))
    versions = [f"{day.isoformat()}:{r.data_version.value if r.data_version else ''}" for day, r in per_day]
    return MaterializeResult(
        data_version=DataVersion(hashlib.sha256("|".join(versions).encode()).hexdigest()),
        check_results=combine_check_results([(day, list(r.check_results or [])) for day, r in per_day]),
        metadata={"partition_range": label, "range_days": len(per_day)},
    )


def _plain(value: object) -> object:
    return getattr(value, "value", value)


def combine_check_results(per_day: Sequence[tuple[date, Sequence[AssetCheckResult]]]) -> list[AssetCheckResult]:
    """One result per check over a range run (Dagster records one evaluation per check and run).

    It passes when the check passed on every day; otherwise it has the severity of the first failing day,
    names the failing days and quotes the first failure.  ``per_day`` metadata keeps every day's metadata.
    """
    by_name: dict[str, list[tuple[date, AssetCheckResult]]] = {}
    for day, results in per_day:
        for result in results:
            by_name.setdefault(result.check_name, []).append((day, result))
    combined = []
    for name, rows in by_name.items():
        failed = [(day, r) for day, r in rows if not r.passed]
        first = failed[0][1] if failed else rows[0][1]
        span = f"{rows[0][0]}...{rows[-1][0]}"
        description = (
            f"passed on all {len(rows)} days of {span}" if not failed else
            f"failed on {len(failed)} of {len(rows)} days of {span} ({', '.join(d.isoformat() for d, _ in failed)})"
            + (f"; {failed[0][0]}: {first.description}" if first.description else "")
        )
        per_day_metadata = {
            day.isoformat(): {"passed": r.passed, **{k: _plain(v) for k, v in (r.metadata or {}).items()}} for day, r in rows
        }
        combined.append(AssetCheckResult(
            check_name=name,
            asset_key=first.asset_key,
            passed=not failed,
            severity=first.severity,
            description=description,
            metadata={
                "failed_days": MetadataValue.json([d.isoformat() for d, _ in failed]),
                "per_day": MetadataValue.json(json.loads(json.dumps(per_day_metadata, default=str))),
            },
        ))
    return combined


def window_start(end: date, days: int = WINDOW_DAYS) -> date:
    """First day of the ``days``-day training window that ends on ``end``."""
    return end - timedelta(days=days - 1)
