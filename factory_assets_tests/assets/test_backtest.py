"""The champion is compared only on days it never trained on; a candidate older than the champion is a backtest.

Issue "Trust under faults", defect 4: re-running older days on a home whose champion is newer compared each
candidate with a champion whose evaluation model had trained on the candidate's test days (it "won" by 0.05 to
0.23 NDCG@10 and every rerun exited 1).
"""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from dagster import DagsterInstance

from factory_assets.ml import promotion
from factory_assets.platform.partitions import WINDOW_DAYS
from factory_assets.ml import registry
from factory_assets_tests import ml_helpers as ml
from factory_assets_tests.helpers import FIRST_DAY


@pytest.fixture
def home_copy(tmp_path_factory, tmp_path):
    """A private copy of a home with 36 ingested days (built by the DataOps assets, once per session)."""
    return ml.copy_home(ml.ingested(tmp_path_factory), tmp_path / "home")

TRAIN_DAY = FIRST_DAY + timedelta(days=WINDOW_DAYS - 1)  # 2024-10-28, the first day with a full window
D = date.fromisoformat
BLEND = {"model_kind": "blend"}  # ~2 s a fit: what is tested here does not depend on the model


def test_not_comparable_by_hand():
    # champion of 11-30 (evaluation model trained 11-03..11-23); a rerun of 11-24 tests on 11-18..11-24
    reason = promotion.champion_not_comparable(7, D("2024-11-30"), D("2024-11-24"), (D("2024-11-03"), D("2024-11-23")),
                                               (D("2024-11-18"), D("2024-11-24")))
    assert reason.startswith("backtest: the candidate's day 2024-11-24 is older than champion v7's (2024-11-30)")
    assert "trained on 2024-11-03..2024-11-23, which overlaps this candidate's test days 2024-11-18..2024-11-24" in reason
    # the next day's forward candidate (tests 11-25..12-01) never overlaps: compared
    assert promotion.champion_not_comparable(7, D("2024-11-30"), D("2024-12-01"), (D("2024-11-03"), D("2024-11-23")),
                                             (D("2024-11-25"), D("2024-12-01"))) is None
    # the same day (a rerun of the champion's own day): its test days follow the champion's training: compared
    assert promotion.champion_not_comparable(7, D("2024-11-30"), D("2024-11-30"), (D("2024-11-03"), D("2024-11-23")),
                                             (D("2024-11-24"), D("2024-11-30"))) is None
    # a forward candidate overlapping by one day (another window/holdout): leakage, not compared
    leak = promotion.champion_not_comparable(7, D("2024-11-30"), D("2024-12-01"), (D("2024-11-03"), D("2024-11-25")),
                                             (D("2024-11-25"), D("2024-12-01")))
    assert leak.startswith("champion v7's evaluation model trained on 2024-11-03..2024-11-25") and "not compared" in leak


def test_verdict_of_a_backtest():
    ok = [promotion.GateResult(name, True, "ok") for name in promotion.GATES]
    assert promotion.decide(ok, backtest_of=7)[0] == promotion.BACKTEST
    assert promotion.decide(ok)[0] == promotion.PROMOTE
    failed = [promotion.GateResult(promotion.BEATS_BASELINE, False, "no"), *ok[1:]]
    assert promotion.decide(failed, backtest_of=7)[0] == promotion.REJECT  # a bad backtest is still rejected


def test_an_older_day_is_a_backtest_never_promoted_and_not_compared_with_the_newer_champion(home_copy):
    instance = DagsterInstance.ephemeral()
    newer, older = TRAIN_DAY + timedelta(days=8), TRAIN_DAY + timedelta(days=6)  # 11-05 and 11-03
    assert ml.train(home_copy, newer, instance, BLEND).success
    aliases = home_copy / "simulator" / "aliases"
    champion = registry.read_alias(aliases)
    result = ml.train(home_copy, older, instance, BLEND)
    assert result.success  # not a failure: the factory did its job
    [gate] = [e for e in result.get_asset_check_evaluations() if e.check_name == promotion.NOT_WORSE_THAN_CHAMPION]
    assert gate.passed and gate.description.startswith(
        f"not compared: backtest: the candidate's day {older} is older than champion v1's ({newer})")
    # the champion's evaluation model trained on 10-09..10-29, the candidate tests on 10-28..11-03: the leak
    assert "which overlaps this candidate's test days 2024-10-28..2024-11-03" in gate.description
    assert gate.metadata["compared"].value is False
    [mat] = [e.materialization for e in result.get_asset_materialization_events()
             if e.asset_key.to_user_string() == "candidate_model"]
    assert mat.metadata["verdict"].value == "backtest" and mat.metadata["registry_status"].value == "backtest"
    assert registry.read_alias(aliases) == champion  # never promoted over the newer champion
    with ml.connect(home_copy) as con:
        row = registry.version_row(con, 2)
        decision = con.exec_driver_sql("SELECT verdict FROM promotion_decisions WHERE version = 2").fetchone()[0]
    assert row["status"] == "backtest" and decision == "backtest"
    assert row["metrics"]["champion"] is None and row["metrics"]["champion_compared"] is False


def test_a_forward_candidate_is_compared_with_the_champion(home_copy):
    instance = DagsterInstance.ephemeral()
    assert ml.train(home_copy, TRAIN_DAY, instance, BLEND).success
    result = ml.train(home_copy, TRAIN_DAY + timedelta(days=7), instance, BLEND)  # tests 10-29..11-04; champion trained ..10-21
    [gate] = [e for e in result.get_asset_check_evaluations() if e.check_name == promotion.NOT_WORSE_THAN_CHAMPION]
    assert gate.description.startswith("NDCG@10 difference vs champion v1") and "compared" not in gate.metadata
