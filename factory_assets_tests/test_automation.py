"""The factory's automation, evaluated tick by tick on the loaded definitions with a frozen clock.

Runs are simulated, not executed: what a run would have done is reported to an ephemeral instance
(``report_runless_asset_event`` for materialisations and check results; a run record with planned
materialisations for "in progress" and "failed"), so ten simulated days take a few seconds.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone

from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetKey,
    AssetMaterialization,
    AutomationConditionSensorDefinition,
    DagsterInstance,
    DagsterRunStatus,
    DefaultSensorStatus,
    FreshnessPolicy,
    evaluate_automation_conditions,
)
from dagster._core.events import AssetMaterializationPlannedData, DagsterEvent, DagsterEventType, StepMaterializationData
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.test_utils import freeze_time
from dagster._core.utils import make_new_run_id

from factory_assets.platform import automation
from factory_assets.data.defs.monitoring import BEHAVIOUR_DRIFT, DRIFT_CHECK
from factory_assets.definitions import defs
from factory_assets.platform.keys import INTRADAY_FEATURES, LIVE_STATE

GRAPH = defs.resolve_asset_graph()
INTRADAY = {INTRADAY_FEATURES, LIVE_STATE}  # unpartitioned, every 15 minutes: not part of the daily timeline here
RAW, CANDIDATE, SERVED, WINDOW = "raw_events", "candidate_model", "served_model", "training_window"
FEATURES = ("user_item_daily", "item_daily")
JOB = "__ASSET_JOB"
DRIFT_RETRAIN = automation.DRIFT_RETRAIN.get_label()
DRIFT_PENDING = automation.DRIFT_PENDING.get_label()

# A day's cycle: tick 1 after the raw cron, tick 2 once tick 1's run is done (the candidate waits for drift).
FIRST_EVALUATION = datetime(2024, 11, 1, 0, 20, tzinfo=timezone.utc)


def _names(keys: Iterable[AssetKey]) -> set[str]:
    return {k.to_user_string() for k in keys}


ALL_ASSETS = _names(k for k in GRAPH.get_all_asset_keys() if GRAPH.get(k).is_materializable) - INTRADAY
AFTER_DRIFT = {CANDIDATE} | _names(GRAPH.get(AssetKey(CANDIDATE)).child_keys)
AFTER_DRIFT |= {n for n in ALL_ASSETS if _names(GRAPH.get(AssetKey(n)).parent_keys) & AFTER_DRIFT}
TICK_1 = ALL_ASSETS - AFTER_DRIFT  # raw, features, training window, drift (and any other daily asset)
TICK_2 = AFTER_DRIFT  # candidate (+ gates) and served model


def _descendants(key: AssetKey) -> set[AssetKey]:
    out, stack = set(), list(GRAPH.get(key).child_keys)
    while stack:
        child = stack.pop()
        if child not in out:
            out.add(child)
            stack.extend(GRAPH.get(child).child_keys)
    return out


def day_key(now: datetime, days_back: int = 1) -> str:
    return (now - timedelta(days=days_back)).date().isoformat()


class FactorySim:
    """Ticks the automation on an ephemeral instance and plays what runs would have done."""

    def __init__(self) -> None:
        self.instance = DagsterInstance.ephemeral()
        self.cursor = None
        self.result = None
        self.now = FIRST_EVALUATION
        self.requested: list[tuple[str, str]] = []  # every (asset, partition) ever requested
        self._clock = itertools.count(1)

    def tick(self, now: datetime) -> dict[str, set[str]]:
        self.now = now
        with freeze_time(now):
            self.result = evaluate_automation_conditions(defs=defs, instance=self.instance, cursor=self.cursor)
        self.cursor = self.result.cursor
        out = {}
        for key in GRAPH.get_all_asset_keys():
            if key.to_user_string() in INTRADAY:  # the quarter-hourly path: its own tests (test_intraday_asset, live)
                continue
            partitions = self.result.get_requested_partitions(key)
            if partitions:
                out[key.to_user_string()] = set(partitions)
                self.requested += [(key.to_user_string(), p) for p in partitions]
        return out

    def _later(self):
        return freeze_time(self.now + timedelta(seconds=next(self._clock)))

    def complete(
        self, requested: Mapping[str, set[str]], failing: Iterable[str] = (), run_id: str | None = None
    ) -> None:
        """Play the runs of ``requested``: assets in dependency order; a failed blocking check (a name in
        ``failing``) stops its asset's descendants in the same run, as Dagster does."""
        failing = set(failing)
        blocked: set[tuple[str, str]] = set()
        for level in GRAPH.toposorted_asset_keys_by_level:
            for key in sorted(level, key=lambda k: k.to_user_string()):
                name = key.to_user_string()
                for partition in sorted(requested.get(name, ())):
                    if (name, partition) in blocked:
                        continue
                    self._materialize(key, partition, run_id)
                    for check_key in sorted(GRAPH.get(key).check_keys, key=lambda k: k.name):
                        node = GRAPH.get(check_key)
                        passed = check_key.name not in failing
                        self._check(key, check_key.name, passed, node.blocking, partition)
                        if not passed and node.blocking:
                            blocked |= {(d.to_user_string(), partition) for d in _descendants(key)}

    def _materialize(self, key: AssetKey, partition: str, run_id: str | None = None) -> None:
        with self._later():
            if run_id is None:
                self.instance.report_runless_asset_event(AssetMaterialization(asset_key=key, partition=partition))
            else:
                event = DagsterEvent(
                    event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value, job_name=JOB,
                    event_specific_data=StepMaterializationData(AssetMaterialization(asset_key=key, partition=partition)),
                    step_key=key.to_user_string(),
                )
                self.instance.report_dagster_event(event, run_id=run_id)

    def _check(self, key: AssetKey, name: str, passed: bool, blocking: bool, partition: str | None = None) -> None:
        with self._later():
            self.instance.report_runless_asset_event(
                AssetCheckEvaluation(
                    asset_key=key, check_name=name, passed=passed, blocking=blocking,
                    severity=AssetCheckSeverity.ERROR if blocking else AssetCheckSeverity.WARN,
                    description="simulated",
                )
            )

    def start_run(self, requested: Mapping[str, set[str]]) -> DagsterRun:
        """A run in progress (status STARTED) that plans to materialise ``requested`` (one partition)."""
        partitions = {p for ps in requested.values() for p in ps}
        assert len(partitions) == 1
        run = DagsterRun(
            job_name=JOB, run_id=make_new_run_id(), status=DagsterRunStatus.STARTED,
            tags={"dagster/partition": partitions.pop()}, asset_selection=frozenset(AssetKey(n) for n in requested),
        )
        self.instance.add_run(run)
        for name, ps in requested.items():
            for partition in ps:
                planned = DagsterEvent.build_asset_materialization_planned_event(
                    JOB, name, AssetMaterializationPlannedData(AssetKey(name), partition=partition)
                )
                with self._later():
                    self.instance.report_dagster_event(planned, run_id=run.run_id)
        return run

    def finish_run(self, run: DagsterRun, requested: Mapping[str, set[str]], failing: Iterable[str] = ()) -> None:
        self.complete(requested, failing, run_id=run.run_id)
        with self._later():
            self.instance.report_dagster_event(
                DagsterEvent(event_type_value=DagsterEventType.RUN_SUCCESS.value, job_name=JOB), run_id=run.run_id
            )

    def fail_run(self, run: DagsterRun) -> None:
        with self._later():
            self.instance.report_run_failed(run, message="simulated failure")

    def drift_spike(self, partition: str, drifted: bool = True) -> None:
        """``behaviour_drift`` re-materialised for ``partition`` with its check failing (or passing)."""
        self._materialize(AssetKey(BEHAVIOUR_DRIFT), partition)
        self._check(AssetKey(BEHAVIOUR_DRIFT), DRIFT_CHECK, not drifted, False)

    def node_true(self, asset: str, label: str) -> set[str]:
        """Partitions for which the node labelled ``label`` of ``asset``'s condition was true this tick."""
        result = next(r for r in self.result.results if r.key == AssetKey(asset))
        hits: set[str] = set()
        stack = [result]
        while stack:
            node = stack.pop()
            if node.condition.get_label() == label:
                hits |= set(node.true_subset.expensively_compute_partition_keys())
            stack.extend(node.child_results)
        return hits

    def catch_up(self) -> None:
        """An empty home at FIRST_EVALUATION: play the catch-up ticks until the first served model."""
        for i in range(4):
            requested = self.tick(FIRST_EVALUATION + timedelta(minutes=5 * i))
            self.complete(requested)


def day_cycle(sim: FactorySim, day: int, failing: Iterable[str] = (), drift: bool = False) -> tuple[list[dict[str, set[str]]], list[set[str]]]:
    """One simulated day: ticks at 00:20, 00:25, 00:30 and 06:00 UTC, each followed by its runs.

    Returns what each tick requested and, per tick, the partitions for which the candidate's drift
    trigger was true.  On the first tick the candidate must be waiting for the day's drift verdict.
    """
    start = FIRST_EVALUATION + timedelta(days=day)
    seen, drift_trigger = [], []
    for offset in (timedelta(0), timedelta(minutes=5), timedelta(minutes=10), timedelta(hours=6)):
        requested = sim.tick(start + offset)
        seen.append(requested)
        drift_trigger.append(sim.node_true(CANDIDATE, DRIFT_RETRAIN))
        if offset == timedelta(0):  # the candidate waits for the day's drift verdict, requested this tick
            assert sim.node_true(CANDIDATE, DRIFT_PENDING) == {day_key(start)}
        sim.complete(requested, failing=[*failing, *([DRIFT_CHECK] if drift else [])])
    return seen, drift_trigger


# ------------------------------------------------------------------------------------------------ the rules


def test_every_materialisable_asset_has_a_freshness_policy_and_an_automation_condition():
    nodes = [GRAPH.get(k) for k in GRAPH.get_all_asset_keys() if GRAPH.get(k).is_materializable]
    assert {n.key.to_user_string() for n in nodes} >= {RAW, *FEATURES, WINDOW, CANDIDATE, SERVED, BEHAVIOUR_DRIFT}
    for node in nodes:
        assert node.automation_condition is not None, node.key
        assert isinstance(node.freshness_policy, FreshnessPolicy), node.key
    assert GRAPH.get(AssetKey(SERVED)).freshness_policy == automation.SERVED_FRESHNESS
    assert GRAPH.get(AssetKey(RAW)).freshness_policy == automation.DAILY_FRESHNESS


def test_the_project_sensor_runs_by_default_and_there_is_no_schedule():
    sensors = [s for s in defs.sensors if isinstance(s, AutomationConditionSensorDefinition)]
    assert [s.name for s in sensors] == [automation.AUTOMATION_SENSOR]
    assert sensors[0].default_status == DefaultSensorStatus.RUNNING
    assert not list(defs.schedules or [])
    # every executable asset is targeted, so Dagster creates no (stopped) default sensor for any of them;
    # external assets (reported from outside, e.g. adaptation_demo) are never executed and carry no condition
    executable = {k for k in GRAPH.get_all_asset_keys() if GRAPH.get(k).is_executable}
    assert sensors[0].asset_selection.resolve(GRAPH) >= executable
    assert not GRAPH.get(AssetKey("adaptation_demo")).is_executable
    assert GRAPH.get(AssetKey("adaptation_demo")).automation_condition is None


def test_served_model_waits_for_the_blocking_checks_of_the_candidate():
    labels, stack = set(), [GRAPH.get(AssetKey(SERVED)).automation_condition]
    while stack:
        node = stack.pop()
        labels.add(node.get_label())
        stack.extend(node.children)
    assert "all_deps_blocking_checks_passed" in labels
    assert {"not in progress", "no input missing", "latest day"} <= labels


# ------------------------------------------------------------------------------------------------ ten days


def test_ten_days_request_the_chain_once_a_day_stop_at_a_failed_gate_and_retrain_on_drift():
    sim = FactorySim()
    sim.catch_up()
    assert sim.instance.get_latest_materialization_event(AssetKey(SERVED)) is not None
    gate_day, drift_day = 4, 7
    for day in range(1, 11):
        (first, second, third, later), drift_trigger = day_cycle(
            sim, day, failing=["beats_baseline"] if day == gate_day else (), drift=day == drift_day
        )
        key = day_key(FIRST_EVALUATION + timedelta(days=day))
        # the chain, one partition each: raw -> features -> window, drift; then candidate (+ gates) -> served
        # (also the day after the failed gate: yesterday's failure does not hold today's chain back)
        assert first == {name: {key} for name in TICK_1}, (day, first)
        assert second == {name: {key} for name in TICK_2}, (day, second)
        # a failed gate requests nothing downstream of it, on any later tick of the day
        assert third == {} and later == {}, (day, third, later)
        # the drift spike is a reason of that day's (single) candidate request, and only that day's
        assert drift_trigger == ([set(), {key}, set(), set()] if day == drift_day else [set()] * 4), (day, drift_trigger)
    # the failed gate left that day without a served model; every other day has one
    served = {r.partition_key for r in sim.instance.fetch_materializations(AssetKey(SERVED), limit=100).records}
    gate_key = day_key(FIRST_EVALUATION + timedelta(days=gate_day))
    assert gate_key not in served
    assert len(served) == 1 + 10 - 1
    # nothing was ever requested twice
    duplicates = {r for r in sim.requested if sim.requested.count(r) > 1}
    assert not duplicates


def test_a_drift_spike_alone_requests_one_early_retrain():
    sim = FactorySim()
    sim.catch_up()
    key = day_key(FIRST_EVALUATION)
    assert sim.tick(FIRST_EVALUATION + timedelta(hours=2)) == {}
    # the day's drift is re-evaluated (e.g. after a correction) and now reports drift: no new window,
    # yet the candidate is retrained once, and the new candidate is promoted through its gates
    sim.drift_spike(key)
    retrain = sim.tick(FIRST_EVALUATION + timedelta(hours=2, minutes=5))
    assert retrain == {CANDIDATE: {key}, SERVED: {key}} | {n: {key} for n in TICK_2 - {CANDIDATE, SERVED}}
    assert sim.node_true(CANDIDATE, DRIFT_RETRAIN) == {key}
    sim.complete(retrain)
    assert sim.tick(FIRST_EVALUATION + timedelta(hours=2, minutes=10)) == {}
    assert sim.tick(FIRST_EVALUATION + timedelta(hours=3)) == {}
    # a verdict without drift triggers nothing
    sim.drift_spike(key, drifted=False)
    assert sim.tick(FIRST_EVALUATION + timedelta(hours=3, minutes=5)) == {}


# ------------------------------------------------------------------------------------------------ the traps


def test_trap_no_second_run_while_the_first_is_running():
    sim = FactorySim()
    # an empty home: one catch-up run per day, all queued or running: not one of them is requested again
    catch_up = sim.tick(FIRST_EVALUATION)
    runs = [
        sim.start_run({name: {p} for name, ps in catch_up.items() if p in ps}) for p in sorted(catch_up[RAW])
    ]
    assert len(runs) == automation.LOOKBACK_DAYS
    assert sim.tick(FIRST_EVALUATION + timedelta(minutes=5)) == {}
    for run in runs:
        partition = run.tags["dagster/partition"]
        sim.finish_run(run, {name: {partition} for name, ps in catch_up.items() if partition in ps})
    for i in range(1, 4):
        sim.complete(sim.tick(FIRST_EVALUATION + timedelta(minutes=5 + 5 * i)))
    assert sim.instance.get_latest_materialization_event(AssetKey(SERVED)) is not None
    start = FIRST_EVALUATION + timedelta(days=1)
    first = sim.tick(start)
    run = sim.start_run(first)
    for minutes in (5, 10, 30, 120):  # the day's run is slow: nothing is requested again meanwhile
        assert sim.tick(start + timedelta(minutes=minutes)) == {}, minutes
    sim.finish_run(run, first)
    second = sim.tick(start + timedelta(hours=2, minutes=5))
    assert second == {name: {day_key(start)} for name in TICK_2}
    run = sim.start_run(second)
    assert sim.tick(start + timedelta(hours=2, minutes=10)) == {}
    sim.drift_spike(day_key(start))  # even a drift trigger waits for the running candidate
    assert sim.tick(start + timedelta(hours=2, minutes=15)) == {}
    sim.finish_run(run, second)
    # the drift verdict came before the candidate finished: it was handled by that run
    assert sim.tick(start + timedelta(hours=2, minutes=20)) == {}


def test_trap_nothing_past_a_failed_blocking_check_in_a_new_run():
    sim = FactorySim()
    sim.catch_up()
    start = FIRST_EVALUATION + timedelta(days=1)
    key = day_key(start)
    sim.complete(sim.tick(start))
    sim.complete(sim.tick(start + timedelta(minutes=5)))  # the day's candidate and served model
    assert sim.tick(start + timedelta(minutes=8)) == {}
    # someone re-runs the candidate alone (a run that does not target served_model); a gate fails
    run = sim.start_run({CANDIDATE: {key}})
    sim.complete({CANDIDATE: {key}}, failing=["safe_to_serve"], run_id=run.run_id)
    sim.fail_run(run)
    for minutes in (10, 15, 60, 600):  # served_model is downstream of the failed gate: never requested
        assert sim.tick(start + timedelta(minutes=minutes)) == {}, minutes
    assert sim.node_true(SERVED, "all_deps_blocking_checks_passed") == set()
    # positive control: the same re-run with its gates passing promotes the new candidate
    run = sim.start_run({CANDIDATE: {key}})
    sim.finish_run(run, {CANDIDATE: {key}})
    assert sim.tick(start + timedelta(minutes=605)) == {SERVED: {key}}


def test_trap_windowed_parents_requested_in_other_runs_do_not_count():
    sim = FactorySim()
    first = sim.tick(FIRST_EVALUATION)
    latest = day_key(FIRST_EVALUATION)
    # an empty home: the look-back's raw days and their features, each day one run ...
    assert first[RAW] == first[FEATURES[0]] == first[FEATURES[1]]
    assert len(first[RAW]) == automation.LOOKBACK_DAYS and latest in first[RAW]
    # ... but nothing that reads a window: its older days are only requested, in other runs
    assert not set(first) & {WINDOW, BEHAVIOUR_DRIFT, CANDIDATE, SERVED}
    # one day of the window fails: no window, drift or candidate for the latest day, and no retry loop
    broken = day_key(FIRST_EVALUATION, 5)
    for name in first:
        first[name].discard(broken)
    run = sim.start_run({RAW: {broken}, **{f: {broken} for f in FEATURES}})
    sim.fail_run(run)
    sim.complete(first)
    for minutes in (5, 10, 60):
        requested = sim.tick(FIRST_EVALUATION + timedelta(minutes=minutes))
        assert not set(requested) & {RAW, *FEATURES, WINDOW, BEHAVIOUR_DRIFT, CANDIDATE, SERVED}, requested
        sim.complete(requested)


def test_trap_after_an_outage_the_window_waits_for_the_days_requested_in_other_runs():
    sim = FactorySim()
    sim.catch_up()
    # the daemon was down for five days: the missed days are caught up, one run per day ...
    restart = FIRST_EVALUATION + timedelta(days=5)
    first = sim.tick(restart)
    missed = {day_key(restart, n) for n in range(1, 6)}
    assert first[RAW] == first[FEATURES[0]] == missed
    # ... and nothing that reads a window is requested with them: eager would count those days as
    # present (requested this tick) although they run in other runs, in any order
    assert not set(first) & {WINDOW, BEHAVIOUR_DRIFT, CANDIDATE, SERVED}, first
    sim.complete(first)
    second = sim.tick(restart + timedelta(minutes=5))
    assert second[WINDOW] == second[BEHAVIOUR_DRIFT] == {day_key(restart)}
    assert CANDIDATE not in second


def test_trap_catch_up_requests_a_day_once_even_when_its_status_looks_missing_and_idle():
    # Under `dagster dev` a running run's partition can read "missing" and "not in progress" for an instant
    # (the run has just written it). Here the requested runs simply left no trace: a state-based
    # catch-up would request all those days again on every tick.
    sim = FactorySim()
    first = sim.tick(FIRST_EVALUATION)
    assert len(first[RAW]) == automation.LOOKBACK_DAYS
    for minutes in (5, 10):
        assert not set(sim.tick(FIRST_EVALUATION + timedelta(minutes=minutes))) & {RAW, *FEATURES}


def test_catch_up_is_bounded_by_the_look_back():
    sim = FactorySim()
    first = sim.tick(FIRST_EVALUATION)
    oldest = min(first[RAW])
    assert oldest == day_key(FIRST_EVALUATION, automation.LOOKBACK_DAYS)
    assert automation.LOOKBACK_DAYS >= 28 + 1  # one training window, and the drift's reference day
    # a day that falls out of the look-back is never requested, even when it is missing
    sim.complete({n: ps - {oldest} for n, ps in first.items()})
    later = FIRST_EVALUATION + timedelta(days=1)
    assert oldest not in sim.tick(later).get(RAW, set())


def test_raw_events_follow_the_daily_cron():
    sim = FactorySim()
    sim.catch_up()
    # before 00:15 UTC the new day exists but is not ingested yet (late events may still land) ...
    day = FIRST_EVALUATION.replace(hour=0, minute=5) + timedelta(days=1)
    assert sim.tick(day) == {}
    assert sim.tick(day.replace(minute=14)) == {}
    # ... and a daemon that was not running at 00:15 catches the tick up when it next evaluates
    requested = sim.tick(day.replace(hour=6))
    assert requested[RAW] == {day_key(day)}
