"""How the factory runs itself: automation conditions, freshness policies and the automation sensor.

Everything here is applied in one place, :func:`automate`, mapped over each code location's asset specs (the
DataOps and MLOps locations, and the merged ``factory_assets.definitions``), not asset by asset: an asset added
later gets :data:`DAILY_EAGER` and :data:`DAILY_FRESHNESS` unless it is named in :data:`CONDITIONS` /
:data:`FRESHNESS` or declares its own.  There is no schedule: the daily cycle is the conditions below, evaluated
by each location's sensor (:func:`automation_sensor_for`, declared RUNNING: Dagster's implicit default sensor
starts stopped) on the workspace's asset graph, so conditions see the other location's materializations.
This module names assets by key only (:mod:`factory_assets.platform.keys`): it imports neither half.

The daily cycle (all partitions are UTC days; "latest" is the last complete day)
--------------------------------------------------------------------------------
With two code locations (``workspace.yaml``):

DataOps, after :data:`RAW_CRON` (00:15 UTC)   ``raw_events`` -> the feature views -> ``behaviour_drift`` (one run)
MLOps, once those partitions exist         ``training_window`` -> ``candidate_model`` (+ its three gates) ->
                                          ``served_model`` (one run; blocked in-run by a failed gate)

With the merged definitions (one location) the same conditions give two ticks: tick 1 runs the DataOps assets
and ``training_window`` together, tick 2 the candidate and the served model.

The candidate waits one tick for the day's drift verdict (:data:`DRIFT_PENDING`) so that the drift signal
is *known* when the candidate is requested, and is part of the reason it is requested.

Named pieces (each is a labelled node in the UI's automation-condition tree)
----------------------------------------------------------------------------
``LATEST_DAY``            the newest partition only (eager automation never looks further back)
``IN_LOOKBACK``           the last :data:`LOOKBACK_DAYS` partitions (one training window + drift's extra day +
                          a week): the bound on catch-up, so a partitions definition from 1996 is never backfilled
``CATCH_UP``              *newly* missing inside the look-back (latched until requested or updated), and not failed:
                          fills an empty home (``dagster dev`` on a fresh clone) and heals missed days, one request
                          per day; a failed partition is not retried by itself (the alert says so)
``CATCH_UP_OLDER``        the same for raw, except the latest day, which is the cron's
``DAILY_INGEST``          the daily cron tick (:data:`RAW_CRON`) for the latest raw partition (and, on the very first
                          evaluation, the latest day if it is missing)
``NEW_INPUT``             eager's trigger: newly missing or a dependency updated, since last requested/updated
``DEPS_PRESENT``          no dependency partition missing (same-day ones may come in the same run)
``WINDOW_PRESENT``        windowed dependencies: every partition of the window *already materialised*; only the
                          latest day may arrive in the same run. Trap: eager counts a parent requested this tick
                          as present, but older days requested this tick run in *other* runs, in any order
``DEPS_IDLE``             no dependency partition in a run or backfill in progress
``DEPS_NOT_FAILED``       no dependency partition whose latest run failed (in the rolling window too)
``UPSTREAM_GATES_PASSED`` ``AutomationCondition.all_deps_blocking_checks_passed()``: never past a failed gate
``SAME_RUN_GATES``        the same, or every input requested in this very run (same-day inputs only), where a failed
                          gate stops the child in-run
``NOT_RUNNING``           ``~in_progress()``: never a second run while one is running for the same partition
``DRIFT_RETRAIN``         ``behaviour_drift`` of the day newly updated with its ``drift_within_threshold`` check
                          failed: an early-retrain trigger of ``candidate_model``
``DRIFT_PENDING``         ``behaviour_drift`` of the day requested this tick or in progress: the candidate waits
``INTRADAY_REFRESH``      ``AutomationCondition.on_cron(INTRADAY_CRON)`` and not in progress: ``intraday_features``
                          (not partitioned, no dependencies) every quarter of an hour

Drift and the early retrain
---------------------------
The candidate is retrained every day anyway (``NEW_INPUT``: its training window updated).  The drift
trigger is a second, named reason, OR-ed into the same ``since_last_handled`` trigger: on a drifting day the
candidate request carries both reasons (visible in the evaluation tree), and the drift trigger alone
retrains when the drift verdict changes without a new window (e.g. ``behaviour_drift`` re-materialised after
a correction); if the routine cadence is ever relaxed (say weekly), ``DRIFT_RETRAIN`` keeps retraining on
drift.  Because it is one trigger handled once, a drifting day still trains exactly once.

Freshness (``FreshnessPolicy.time_window`` / ``FreshnessPolicy.cron``)
-----------------------------------------------------------------------
``DAILY_FRESHNESS``   every daily asset: warn after 26 h (a day plus the cycle's slack), fail after 48 h
                      (a whole day missed)
``SERVED_FRESHNESS``  ``served_model``, stricter: the champion pointer must have been refreshed since 00:00 UTC
                      by 03:00 UTC every day (cron deadline ``0 3 * * *``, lower bound 3 h); a day whose
                      candidate is rejected leaves it stale, which is worth an alert.
``INTRADAY_FRESHNESS`` ``intraday_features``: warn after 30 min (a refresh missed), fail after 1 h (three missed).

Environment: ``FACTORY_AUTOMATION_INTERVAL_S`` (default 30) sets how often the automation sensor evaluates.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta

from dagster import (
    AssetSelection,
    AssetSpec,
    AutomationCondition,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
    FreshnessPolicy,
    apply_freshness_policy,
)

from factory_assets.platform import settings
from factory_assets.platform.keys import (
    ADAPTATION_DEMO,
    BEHAVIOUR_DRIFT,
    CANDIDATE_MODEL,
    INTRADAY_FEATURES,
    ITEM_DAILY,
    RAW_EVENTS,
    SERVED_MODEL,
    TRAINING_WINDOW,
    USER_ITEM_DAILY,
)
from factory_assets.platform.partitions import WINDOW_DAYS

AUTOMATION_SENSOR = "factory_automation"
RAW_CRON = "15 0 * * *"  # 00:15 UTC: a quarter of an hour after the UTC day closes, for late events
INTRADAY_CRON = "*/15 * * * *"  # the intraday path's refresh: today's events so far, every quarter of an hour (UTC)
LOOKBACK_DAYS = WINDOW_DAYS + 7
AUTOMATION_INTERVAL_S = settings.automation_interval_s()
AUTOMATION_RUN_TAGS = {"factory/launched_by": "automation"}

# ---------------------------------------------------------------------------------------- building blocks
LATEST_DAY = AutomationCondition.in_latest_time_window().with_label("latest day")
IN_LOOKBACK = AutomationCondition.in_latest_time_window(timedelta(days=LOOKBACK_DAYS)).with_label(
    f"within the {LOOKBACK_DAYS}-day look-back"
)
NOT_FAILED = (~AutomationCondition.execution_failed()).with_label("latest run did not fail")
NOT_RUNNING = (~AutomationCondition.in_progress()).with_label("not in progress")
# Catch-up fires once per partition: when it becomes missing inside the look-back (on an empty home: the first
# evaluation), latched until the partition is requested or updated. Never on the plain state "missing": the
# status Dagster computes for a partition a running run has just written can be momentarily stale ("missing"
# and no longer "in progress"), and a state-based trigger then starts a second run for it (seen under
# `dagster dev`). A partition whose run failed stays missing but is not newly missing: no retry loop.
HANDLED = (AutomationCondition.newly_requested() | AutomationCondition.newly_updated()).with_label("requested or updated")
CATCH_UP = (
    (IN_LOOKBACK & AutomationCondition.missing()).newly_true().since(HANDLED) & IN_LOOKBACK & NOT_FAILED
).with_label("catch up: newly missing within the look-back")
# raw's latest day is the cron's (late events may still land until RAW_CRON); only older days are caught up
CATCH_UP_OLDER = (CATCH_UP & ~LATEST_DAY).with_label("catch up: missing earlier days within the look-back")
NEW_INPUT = (AutomationCondition.newly_missing() | AutomationCondition.any_deps_updated()).with_label("new partition or input")
DAILY_INGEST = (
    LATEST_DAY
    & (
        AutomationCondition.cron_tick_passed(RAW_CRON, "UTC").since_last_handled()
        | (AutomationCondition.initial_evaluation() & AutomationCondition.missing())
    )
).with_label(f"daily ingest ({RAW_CRON} UTC)")

DEPS_PRESENT = (~AutomationCondition.any_deps_missing()).with_label("no input missing")
WINDOW_PRESENT = (
    ~AutomationCondition.any_deps_match(
        AutomationCondition.missing() & ~(AutomationCondition.will_be_requested() & AutomationCondition.in_latest_time_window())
    )
).with_label("every earlier day of the window materialised")
DEPS_IDLE = (~AutomationCondition.any_deps_in_progress()).with_label("no input in progress")
DEPS_NOT_FAILED = (~AutomationCondition.any_deps_match(AutomationCondition.execution_failed())).with_label(
    "no input failed"
)
UPSTREAM_GATES_PASSED = AutomationCondition.all_deps_blocking_checks_passed()
# Dagster's checks here are not partitioned, so "passed" is the latest result of the check, and a check of a
# parent requested this tick does not count as requested for a partitioned child (the partitions definitions
# differ). For same-day (identity-mapped) inputs, a parent requested this tick runs in this very run, where a
# failed blocking check stops the child: that is what all_deps_blocking_checks_passed() means to allow.
SAME_RUN_GATES = (
    UPSTREAM_GATES_PASSED | AutomationCondition.all_deps_match(AutomationCondition.will_be_requested())
).with_label("gates passed, or the gated input runs in this same run")

DRIFT_RETRAIN = AutomationCondition.asset_matches(
    BEHAVIOUR_DRIFT,
    AutomationCondition.newly_updated()
    & AutomationCondition.any_checks_match(AutomationCondition.check_failed()),
).with_label("behaviour drift above threshold")
DRIFT_PENDING = AutomationCondition.asset_matches(
    BEHAVIOUR_DRIFT, AutomationCondition.will_be_requested() | AutomationCondition.in_progress()
).with_label("the day's drift verdict is pending")


def _guarded(trigger: AutomationCondition, *guards: AutomationCondition, label: str) -> AutomationCondition:
    condition = trigger
    for guard in guards:
        condition = condition & guard
    return condition.with_label(label)


_WINDOW_GUARDS = (WINDOW_PRESENT, DEPS_IDLE, DEPS_NOT_FAILED, UPSTREAM_GATES_PASSED, NOT_RUNNING)
_SAME_DAY_GUARDS = (DEPS_PRESENT, DEPS_IDLE, DEPS_NOT_FAILED, SAME_RUN_GATES, NOT_RUNNING)

# ---------------------------------------------------------------------------------------- per asset
RAW_CONDITION = _guarded(DAILY_INGEST | CATCH_UP_OLDER, NOT_RUNNING, label="raw: daily cron, catch up within the look-back")
FEATURES_CONDITION = _guarded(
    (LATEST_DAY & NEW_INPUT.since_last_handled()) | CATCH_UP, *_SAME_DAY_GUARDS,
    label="features: eager on the day's raw events, catch up within the look-back",
)
WINDOWED_CONDITION = _guarded(
    LATEST_DAY & NEW_INPUT.since_last_handled(), *_WINDOW_GUARDS,
    label="windowed: eager on the latest day once the whole window exists",
)
CANDIDATE_CONDITION = _guarded(
    LATEST_DAY & (NEW_INPUT | DRIFT_RETRAIN).since_last_handled(), *_SAME_DAY_GUARDS, ~DRIFT_PENDING,
    label="candidate: eager on a new window or on drift, after the day's drift verdict",
)
SERVED_CONDITION = _guarded(
    LATEST_DAY & NEW_INPUT.since_last_handled(), *_SAME_DAY_GUARDS,
    label="served: eager on a candidate whose gates passed",
)
# on_cron: the cron tick passed since last handled (never on the first evaluation) and every dependency updated
# since the tick (vacuously true: intraday_features reads the source itself and has no dependency)
INTRADAY_REFRESH = _guarded(
    AutomationCondition.on_cron(INTRADAY_CRON, "UTC"), NOT_RUNNING,
    label=f"intraday: every quarter of an hour ({INTRADAY_CRON} UTC)",
)
DAILY_EAGER = _guarded(
    LATEST_DAY & NEW_INPUT.since_last_handled(), *_WINDOW_GUARDS,
    label="default: eager on the latest day",
)

CONDITIONS: Mapping[str, AutomationCondition] = {
    RAW_EVENTS: RAW_CONDITION,
    USER_ITEM_DAILY: FEATURES_CONDITION,
    ITEM_DAILY: FEATURES_CONDITION,
    TRAINING_WINDOW: WINDOWED_CONDITION,
    BEHAVIOUR_DRIFT: WINDOWED_CONDITION,
    CANDIDATE_MODEL: CANDIDATE_CONDITION,
    SERVED_MODEL: SERVED_CONDITION,
    INTRADAY_FEATURES: INTRADAY_REFRESH,
}

# ---------------------------------------------------------------------------------------- freshness
DAILY_FRESHNESS = FreshnessPolicy.time_window(fail_window=timedelta(hours=48), warn_window=timedelta(hours=26))
SERVED_FRESHNESS = FreshnessPolicy.cron(deadline_cron="0 3 * * *", lower_bound_delta=timedelta(hours=3), timezone="UTC")
INTRADAY_FRESHNESS = FreshnessPolicy.time_window(fail_window=timedelta(hours=1), warn_window=timedelta(minutes=30))
FRESHNESS: Mapping[str, FreshnessPolicy] = {SERVED_MODEL: SERVED_FRESHNESS, INTRADAY_FEATURES: INTRADAY_FRESHNESS}
EXTERNAL = frozenset({ADAPTATION_DEMO})


def automate(spec: AssetSpec) -> AssetSpec:
    """The central policy: one automation condition and one freshness policy on every asset spec.

    External assets (:data:`EXTERNAL`, reported from outside a run, e.g. ``adaptation_demo``) are left alone:
    Dagster never executes them, so there is nothing to automate or to hold to a freshness deadline.
    """
    name = spec.key.to_user_string()
    if name in EXTERNAL:
        return spec
    condition = CONDITIONS.get(name) or spec.automation_condition or DAILY_EAGER
    policy = FRESHNESS.get(name) or spec.freshness_policy or DAILY_FRESHNESS
    return apply_freshness_policy(spec.replace_attributes(automation_condition=condition), policy)


def automation_sensor_for(name: str, target: AssetSelection) -> AutomationConditionSensorDefinition:
    """The automation sensor of one code location (RUNNING by default), evaluating ``target``'s conditions.

    Each location targets only the assets it materialises; the conditions still see every location's
    materializations (the daemon evaluates them on the workspace's asset graph), so a feature partition
    written by the DataOps location satisfies the MLOps location's candidate condition.
    """
    return AutomationConditionSensorDefinition(
        name,
        target=target,
        default_status=DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=AUTOMATION_INTERVAL_S,
        run_tags=AUTOMATION_RUN_TAGS,
        emit_backfills=False,
        description="Evaluates the automation condition of every asset of this code location (see "
        "factory_assets.platform.automation); running by default.",
    )


# The single-process definitions (factory_assets.definitions): one sensor over every asset.
automation_sensor = automation_sensor_for(AUTOMATION_SENSOR, AssetSelection.all())
