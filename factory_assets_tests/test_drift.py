"""Behaviour drift: the metrics by hand and against scipy, the verdict, and the asset on the simulated shop."""

from __future__ import annotations

import math
from datetime import date

import duckdb
import numpy as np
import pytest
from dagster import materialize
from scipy.spatial.distance import jensenshannon

from factory_assets.data import drift
from factory_assets.data.defs.monitoring import BEHAVIOUR_DRIFT, DRIFT_CHECK, DRIFT_HISTORY, behaviour_drift, item_category_map
from factory_assets.data.sources.simulator import ShopSimulator
from factory_assets.feature_store import store
from factory_assets.data.sources.schema import validate_events
from factory_assets.data.warehouse import write_raw_partition
from factory_assets_tests.helpers import ALL_ASSETS, days, small_factory


def test_psi_by_hand():
    # (0.5 - 0.25) ln(0.5 / 0.25) + (0.5 - 0.75) ln(0.5 / 0.75)
    expected = 0.25 * math.log(2) + 0.25 * math.log(1.5)
    assert drift.psi(np.array([1, 1]), np.array([1, 3])) == pytest.approx(expected, rel=1e-12)
    assert drift.psi(np.array([5, 5, 5]), np.array([1, 1, 1])) == pytest.approx(0.0, abs=1e-15)
    a, b = np.array([3.0, 1.0, 6.0]), np.array([2.0, 5.0, 3.0])
    assert drift.psi(a, b) == pytest.approx(drift.psi(b, a))  # PSI is symmetric


def test_psi_is_finite_on_an_empty_bin():
    value = drift.psi(np.array([0.0, 10.0]), np.array([5.0, 5.0]))
    assert math.isfinite(value) and value > drift.PSI_THRESHOLD


def test_jensen_shannon_matches_scipy_and_its_bounds():
    rng = np.random.default_rng(3)
    for _ in range(20):
        p, q = rng.random(12), rng.random(12)
        assert drift.js_distance(p, q) == pytest.approx(jensenshannon(p, q), rel=1e-9)
        assert drift.js_divergence(p, q) == pytest.approx(jensenshannon(p, q) ** 2, rel=1e-9)
    assert drift.js_divergence(np.array([1, 0]), np.array([0, 1])) == pytest.approx(math.log(2))
    assert drift.js_distance(np.array([2, 2]), np.array([1, 1])) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize(
    "current, reference",
    [(np.array([1.0, 2.0]), np.array([1.0])), (np.array([0.0, 0.0]), np.array([1.0, 1.0])), (np.array([-1.0, 2.0]), np.array([1.0, 1.0])),
     (np.array([np.nan, 1.0]), np.array([1.0, 1.0]))],
)
def test_metrics_refuse_bad_counts(current, reference):
    with pytest.raises(ValueError):
        drift.psi(current, reference)
    with pytest.raises(ValueError):
        drift.js_distance(current, reference)


def test_items_are_binned_as_the_reference_top_items_plus_other():
    reference = {f"i{k}": float(100 - k) for k in range(60)}
    current = {"i0": 5.0, "i59": 3.0, "new": 2.0}
    labels, cur, ref = drift.bin_items(current, reference, top=50)
    assert labels[:2] == ["i0", "i1"] and labels[-1] == drift.OTHER and len(labels) == 51
    assert cur[0] == 5.0 and cur[-1] == 5.0  # i59 (not in the top 50) and an unseen item go to "other"
    assert ref.sum() == pytest.approx(sum(reference.values()))


def test_categories_sum_their_items_and_unknown_items_go_to_other():
    labels, cur, ref = drift.bin_categories({"a": 1, "b": 2, "x": 4}, {"a": 3, "b": 1}, {"a": "c1", "b": "c2"})
    assert labels == sorted(["c1", "c2", drift.OTHER])
    assert dict(zip(labels, cur)) == {"c1": 1, "c2": 2, drift.OTHER: 4}
    assert dict(zip(labels, ref)) == {"c1": 3, "c2": 1, drift.OTHER: 0}


def test_verdict_thresholds_and_no_verdict_without_data():
    assert (drift.PSI_THRESHOLD, drift.JS_DISTANCE_THRESHOLD) == (0.25, 0.1)
    reference = {f"i{k}": 100.0 for k in range(20)}
    same = {k: v / 10 for k, v in reference.items()}
    shifted = {f"i{k}": (30.0 if k < 5 else 1.0) for k in range(20)}
    categories = {f"i{k}": "a" if k < 10 else "b" for k in range(20)}
    calm = drift.assess(same, reference, categories)
    assert not calm.drifted and calm.reason == "all metrics within thresholds"
    assert [d.name for d in calm.distributions] == ["items", "categories"]
    spike = drift.assess(shifted, reference, categories)
    assert spike.drifted and "items psi" in spike.reason and "categories" in spike.reason
    items_only = drift.assess(shifted, reference, None)
    assert items_only.drifted and items_only.metric("categories", "psi") is None
    assert "item popularity only" in items_only.reason
    assert not drift.assess(same, {}, categories).drifted  # no reference yet: no verdict
    tiny = drift.assess({"i0": 3.0}, reference, categories)
    assert not tiny.drifted and "no verdict" in tiny.reason


def test_category_map_from_the_simulator_an_explicit_map_or_none():
    sim = ShopSimulator(n_users=50, n_items=30, events_per_day=100, seed=1)
    mapping = item_category_map(sim)
    assert set(mapping) == set(sim.item_ids()) and len(set(mapping.values())) > 1

    class WithMap:
        def item_category_map(self):
            return {"i1": "shoes"}

    assert item_category_map(WithMap()) == {"i1": "shoes"}
    assert item_category_map(object()) is None


def _feature_store(factory, ingest_days) -> None:
    """raw_events and item_daily for ``ingest_days`` through the warehouse functions (no Dagster runs: fast)."""
    with factory.warehouse() as con:
        for day in ingest_days:
            accepted, rejected = validate_events(factory.event_source.fetch_day(day).events, day)
            write_raw_partition(con, day, accepted, rejected)
            store.build_partition(con, store.ITEM_DAILY, day)


def _drift(factory, day: date):
    result = materialize(
        [*ALL_ASSETS, behaviour_drift], selection=[BEHAVIOUR_DRIFT], partition_key=day.isoformat(),
        resources=factory.resources(), raise_on_error=False,
    )
    assert result.success
    (mat,) = result.asset_materializations_for_node(BEHAVIOUR_DRIFT)
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == DRIFT_CHECK and check.severity.value == "WARN"
    return mat, check


def test_the_asset_flags_the_simulated_preference_shift_and_keeps_a_history(tmp_path):
    # the simulator's preference shift starts on 2024-11-11; 2024-10-13 .. 11-11 gives 11-10 a full reference
    factory = small_factory(tmp_path)
    _feature_store(factory, days(date(2024, 10, 13), 30))
    before, passed = _drift(factory, date(2024, 11, 10))
    assert passed.passed and before.metadata["drifted"].value is False
    assert before.metadata["categories_known"].value is True
    assert before.metadata["psi_categories"].value < 0.05 and before.metadata["js_distance_items"].value < drift.JS_DISTANCE_THRESHOLD
    spike, failed = _drift(factory, date(2024, 11, 11))
    assert not failed.passed and spike.metadata["drifted"].value is True
    assert spike.metadata["psi_categories"].value > drift.PSI_THRESHOLD
    assert spike.metadata["js_distance_categories"].value > drift.JS_DISTANCE_THRESHOLD
    assert "2024-10-14..2024-11-10 (28 days present)" == spike.metadata["reference"].value
    assert "2024-11-10" in spike.metadata["history"].value and "2024-11-11" in spike.metadata["history"].value
    # re-materialising a day replaces its history row and keeps its data version
    again, _ = _drift(factory, date(2024, 11, 11))
    assert again.metadata["data_version"].value == spike.metadata["data_version"].value
    with duckdb.connect(str(factory.layout.warehouse), read_only=True) as con:
        rows = con.execute(f"SELECT partition_day, drifted FROM {DRIFT_HISTORY} ORDER BY partition_day").fetchall()
    assert rows == [(date(2024, 11, 10), False), (date(2024, 11, 11), True)]


def test_the_asset_refuses_a_day_without_features(tmp_path):
    factory = small_factory(tmp_path)
    _feature_store(factory, days(date(2024, 12, 1), 2))
    result = materialize(
        [*ALL_ASSETS, behaviour_drift], selection=[BEHAVIOUR_DRIFT], partition_key="2024-12-20",
        resources=factory.resources(), raise_on_error=False,
    )
    assert not result.success


def test_change_point_is_the_first_day_of_the_latest_drifted_run_in_the_window():
    from datetime import date, timedelta

    from factory_assets.feature_store.contract import change_point

    d = lambda n: date(2024, 11, 1) + timedelta(days=n)
    start, end = d(0), d(27)
    assert change_point({}, start, end) is None
    assert change_point({d(5): False, d(6): False}, start, end) is None
    # two runs: 3..4 and 10..12 (11 missing a verdict would break the run; here all present) -> 10
    verdicts = {d(3): True, d(4): True, d(5): False, d(10): True, d(11): True, d(12): True, d(13): False}
    assert change_point(verdicts, start, end) == d(10)
    assert change_point(verdicts, start, d(9)) == d(3)  # the later run is outside the window
    assert change_point({d(10): True, d(12): True}, start, end) == d(12)  # a gap ends a run
    assert change_point({d(0): True, d(1): True}, start, end) is None  # the whole window is the new regime
    assert change_point({d(-2): True, d(-1): True, d(0): True, d(1): True}, start, end) is None
