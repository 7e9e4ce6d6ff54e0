"""Partition ranges (``dagster asset materialize --partition-range A...B``, UI backfills): one run per range.

``materialize()`` has no range argument: a range run is the tags ``dagster/asset_partition_range_start`` /
``_end`` on assets with ``BackfillPolicy.single_run()``.  The DataOps assets must store exactly what one
single-partition run per day stores; the ML assets refuse a range of several days in one line.
"""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import duckdb
import pytest
from dagster import AssetCheckResult, AssetCheckSeverity, DagsterEventType, materialize
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from factory_assets.data.defs.monitoring import BEHAVIOUR_DRIFT, behaviour_drift
from factory_assets.platform.partitions import combine_check_results
from factory_assets.definitions import DATAOPS_ASSETS, MLOPS_ASSETS, MONITORING_ASSETS
from factory_assets_tests.helpers import FIRST_DAY, INGEST, days, small_factory

ASSETS = [*DATAOPS_ASSETS, *MLOPS_ASSETS, *MONITORING_ASSETS]
SELECTION = [*INGEST, BEHAVIOUR_DRIFT]
RANGE = days(FIRST_DAY + timedelta(days=3), 3)  # three days after three already stored ones (item_features, drift read back)

# every warehouse table that holds rows per day -> its day column; computed_at / ingested_at are wall-clock times
DAY_TABLES = {
    "raw_events": "partition_day", "raw_events_quarantine": "partition_day", "user_item_daily": "day",
    "item_daily": "day", "user_features": "day", "item_features": "day", "behaviour_drift_history": "partition_day",
}
WALL_CLOCK = {"computed_at", "ingested_at"}


def _range_tags(first: date, last: date) -> dict[str, str]:
    return {ASSET_PARTITION_RANGE_START_TAG: first.isoformat(), ASSET_PARTITION_RANGE_END_TAG: last.isoformat()}


def _materialize_range(home: Path, selection: list[str], first: date, last: date):
    return materialize(ASSETS, selection=selection, tags=_range_tags(first, last),
                       resources=small_factory(home).resources(), raise_on_error=False)


def _run_days(home: Path, selection: list[str], run_days: list[date]) -> list:
    results = []
    for day in run_days:
        result = materialize(ASSETS, selection=selection, partition_key=day.isoformat(),
                             resources=small_factory(home).resources(), raise_on_error=False)
        assert result.success, day
        results.append(result)
    return results


def _warehouse(home: Path) -> dict[str, list]:
    """Rows per day and a content hash per day of every per-day table, the ledger and the online copy."""
    with duckdb.connect(str(home / "simulator" / "warehouse.duckdb"), read_only=True) as con:
        out = {}
        for table, day_column in DAY_TABLES.items():
            columns = [c for (c,) in con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position", [table]
            ).fetchall() if c not in WALL_CLOCK]
            out[table] = con.execute(
                f"SELECT {day_column}, count(*), sum(hash({', '.join(columns)})) FROM {table} GROUP BY 1 ORDER BY 1"
            ).fetchall()
        out["partition_ledger"] = con.execute(
            "SELECT asset, partition_day, data_version, row_count FROM partition_ledger ORDER BY 1, 2").fetchall()
        out["online_feature_views"] = con.execute(
            "SELECT view_name, as_of, feature_version, row_count FROM online_feature_views ORDER BY 1").fetchall()
    return out


def _materializations(results) -> dict[tuple[str, str], dict]:
    """(asset, partition) -> the materialisation's metadata values."""
    out = {}
    for result in results:
        for event in result.get_asset_materialization_events():
            m = event.materialization
            out[(m.asset_key.to_user_string(), m.partition)] = {k: v.value for k, v in m.metadata.items()}
    return out


def test_a_range_run_stores_every_day_as_single_day_runs_do(tmp_path):
    before = days(FIRST_DAY, 3)
    by_range, by_day = tmp_path / "range", tmp_path / "days"
    for home in (by_range, by_day):
        _run_days(home, SELECTION, before)

    ranged = _materialize_range(by_range, SELECTION, RANGE[0], RANGE[-1])
    assert ranged.success
    singles = _run_days(by_day, SELECTION, RANGE)

    stored = _warehouse(by_range)
    assert stored == _warehouse(by_day)
    assert {d for d, _, _ in stored["raw_events"]} == set(before + RANGE)
    assert all(n > 0 for _, n, _ in stored["raw_events"])

    # one materialisation per asset and day, each carrying that day's own metadata (row count, data version)
    ranged_events, single_events = _materializations([ranged]), _materializations(singles)
    assert set(ranged_events) == set(single_events) == {(a, d.isoformat()) for a in SELECTION for d in RANGE}
    for key, metadata in single_events.items():
        for name in ("dagster/row_count", "data_version", "quarantined_rows", "psi_items", "user_features_rows"):
            if name in metadata:
                assert ranged_events[key][name] == metadata[name], (key, name)
        assert ranged_events[key]["partition_range"] == f"{RANGE[0]}...{RANGE[-1]}"

    # each check is evaluated once for the run, over every day of it
    evaluations = {e.check_name: e for e in ranged.get_asset_check_evaluations()}
    assert set(evaluations) == {"schema", "non_null_ids", "ts_in_partition", "unique_event_id", "drift_within_threshold"}
    raw_check = evaluations["unique_event_id"]
    assert raw_check.passed and raw_check.description == f"passed on all 3 days of {RANGE[0]}...{RANGE[-1]}"
    assert set(raw_check.metadata["per_day"].value) == {d.isoformat() for d in RANGE}

    # re-running the same range changes nothing (each day's write replaces that day)
    assert _materialize_range(by_range, SELECTION, RANGE[0], RANGE[-1]).success
    assert _warehouse(by_range) == stored


@pytest.mark.parametrize("asset", ["training_window", "candidate_model", "served_model", "shadow_evaluation"])
def test_the_ml_assets_refuse_a_range_of_several_days_in_one_line(tmp_path, asset):
    result = _materialize_range(tmp_path, [asset], RANGE[0], RANGE[-1])
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE]
    message = failure.event_specific_data.error.message.strip()
    assert "\n" not in message
    start = RANGE[0] - timedelta(days=27)
    assert f"{asset} runs one day at a time" in message and f"{RANGE[0]}...{RANGE[-1]}" in message
    assert f"`factory run --start {max(start, date(1996, 1, 1))} --end {RANGE[-1]} --backtest`" in message
    assert not result.get_asset_materialization_events()


def test_a_one_day_range_is_that_day(tmp_path):
    """A range of one day (a UI backfill of one partition) is that day, for the ML assets too."""
    day = RANGE[0]
    result = _materialize_range(tmp_path, ["training_window"], day, day)
    [mat] = result.get_asset_materialization_events()
    assert mat.partition == day.isoformat()
    [evaluation] = result.get_asset_check_evaluations()  # no features stored: the window is incomplete, as for --partition
    assert evaluation.check_name == "window_complete" and not evaluation.passed


def test_a_check_that_fails_on_one_day_fails_for_the_range():
    def result(passed: bool, rows: int) -> AssetCheckResult:
        return AssetCheckResult(check_name="unique_event_id", asset_key="raw_events", passed=passed,
                                description=None if passed else f"{rows} duplicates", metadata={"duplicate_event_ids": rows})

    d1, d2, d3 = RANGE
    [combined] = combine_check_results([(d1, [result(True, 0)]), (d2, [result(False, 2)]), (d3, [result(True, 0)])])
    assert not combined.passed and combined.severity == AssetCheckSeverity.ERROR
    assert combined.description == f"failed on 1 of 3 days of {d1}...{d3} ({d2}); {d2}: 2 duplicates"
    assert combined.metadata["failed_days"].value == [d2.isoformat()]
    assert combined.metadata["per_day"].value[d2.isoformat()] == {"passed": False, "duplicate_event_ids": 2}
    [ok] = combine_check_results([(d1, [result(True, 0)])])
    assert ok.passed and ok.description == f"passed on all 1 days of {d1}...{d1}"


def test_backfill_policies_one_run_for_dataops_ranges_one_run_per_day_for_ml():
    from dagster import BackfillPolicy

    # the CLI's --partition-range needs single_run on every selected asset; a UI backfill of the ML assets must
    # still launch one run per day (each day's candidate is gated against the champion of the day before)
    assert {a.backfill_policy for a in [*DATAOPS_ASSETS, *MONITORING_ASSETS]} == {BackfillPolicy.single_run()}
    assert behaviour_drift.backfill_policy == BackfillPolicy.single_run()
    assert {a.backfill_policy for a in MLOPS_ASSETS} == {BackfillPolicy.multi_run(1)}
