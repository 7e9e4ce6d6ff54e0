"""Declarative automation crosses the seam: feature partitions written by the DataOps location make the MLOps
location's automation train, and a failed gate still stops the served model.

Each location's definitions are evaluated on their own (as each location's automation sensor does), on one
instance; what the other location's runs would write is reported to that instance as materialisations.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetKey,
    AssetMaterialization,
    DagsterInstance,
    evaluate_automation_conditions,
)
from dagster._core.test_utils import freeze_time

from factory_assets.data.defs import definitions as dataops
from factory_assets.ml.defs import definitions as mlops
from factory_assets.platform.automation import LOOKBACK_DAYS

DATA_ASSETS = ("raw_events", "user_item_daily", "item_daily", "user_features", "item_features", "online_features",
               "behaviour_drift")
NOW = datetime(2024, 11, 1, 0, 20, tzinfo=timezone.utc)  # 20 minutes after 2024-10-31 closed
LATEST = date(2024, 10, 31)


class Location:
    """One code location's automation, ticked on a shared instance."""

    def __init__(self, defs, instance: DagsterInstance) -> None:
        self.defs, self.instance, self.cursor = defs, instance, None

    def tick(self, now: datetime) -> dict[str, set[str]]:
        with freeze_time(now):
            result = evaluate_automation_conditions(defs=self.defs, instance=self.instance, cursor=self.cursor)
        self.cursor = result.cursor
        graph = self.defs.resolve_asset_graph()
        return {k.to_user_string(): set(result.get_requested_partitions(k))
                for k in graph.get_all_asset_keys() if result.get_requested_partitions(k)}


def _materialize(instance: DagsterInstance, asset: str, day: date) -> None:
    instance.report_runless_asset_event(AssetMaterialization(asset_key=asset, partition=day.isoformat()))


def _gate(instance: DagsterInstance, asset: str, name: str, passed: bool) -> None:
    instance.report_runless_asset_event(AssetCheckEvaluation(
        asset_key=AssetKey(asset), check_name=name, passed=passed, blocking=True,
        severity=AssetCheckSeverity.ERROR, description="simulated",
    ))


def test_a_feature_partition_from_the_dataops_location_triggers_the_mlops_candidate_behind_its_gates():
    instance = DagsterInstance.ephemeral()
    data, ml = Location(dataops.defs, instance), Location(mlops.defs, instance)
    # the DataOps location has built every view of the days before the latest one (its whole catch-up look-back)
    for i in range(1, LOOKBACK_DAYS + 1):
        day = LATEST - timedelta(days=i)
        for asset in DATA_ASSETS:
            _materialize(instance, asset, day)

    # the latest day's features do not exist yet: the MLOps location waits (its window is incomplete)
    assert ml.tick(NOW) == {}
    # the DataOps location's automation asks for the latest day (its own assets only, never an ML asset)
    requested = data.tick(NOW)
    assert requested.get("raw_events") == {LATEST.isoformat()}
    assert set(requested) <= set(DATA_ASSETS)

    # that run lands the day's raw events, views and drift verdict
    for asset in DATA_ASSETS:
        _materialize(instance, asset, LATEST)
    # the MLOps location sees the new feature partitions: one run of the day's ML chain (window, candidate, its
    # gated promotion, the shadow evaluation); a failed gate stops served_model inside that run
    day = {LATEST.isoformat()}
    assert ml.tick(NOW + timedelta(minutes=5)) == {
        "training_window": day, "candidate_model": day, "served_model": day, "shadow_evaluation": day,
    }
    # play that run: the candidate is trained but a blocking gate fails, so served_model is not materialised
    _materialize(instance, "training_window", LATEST)
    _gate(instance, "training_window", "window_complete", True)
    _materialize(instance, "candidate_model", LATEST)
    _gate(instance, "candidate_model", "beats_baseline", False)
    _gate(instance, "candidate_model", "not_worse_than_champion", True)
    _gate(instance, "candidate_model", "safe_to_serve", True)
    _materialize(instance, "shadow_evaluation", LATEST)
    # later ticks never request the served model past the failed gate, nor anything else of the day again
    for minutes in (10, 15, 60):
        assert ml.tick(NOW + timedelta(minutes=minutes)) == {}
    # the DataOps location requests nothing of the day either: only its unpartitioned intraday refresh, on that
    # refresh's own quarter-hour cron (00:30 has passed)
    assert data.tick(NOW + timedelta(minutes=10)) == {"intraday_features": {None}}

    # the next day's features land: the MLOps location trains again, and this time the gates pass
    tomorrow = LATEST + timedelta(days=1)
    later = NOW + timedelta(days=1)
    assert ml.tick(later) == {}  # nothing before the DataOps location has written the day
    for asset in DATA_ASSETS:
        _materialize(instance, asset, tomorrow)
    assert ml.tick(later + timedelta(minutes=5)) == {k: {tomorrow.isoformat()} for k in
                                                      ("training_window", "candidate_model", "served_model", "shadow_evaluation")}
