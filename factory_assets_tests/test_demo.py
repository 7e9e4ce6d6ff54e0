"""The adaptation experiment (``factory demo``): its metrics by hand, and one small run end to end."""

from __future__ import annotations

import json
from datetime import date
from io import BytesIO

import numpy as np
import pandas as pd
import pytest
from dagster import AssetKey, DagsterInstance

from factory_assets import demo
from factory_assets.demo_report import ADAPTATION_DEMO, report
from factory_assets.ml.recsys.artefact import read_manifest
from factory_assets.data.sources.simulator import ShopSimulator
from factory_assets_tests.helpers import SMALL_SHOP


def test_score_counts_a_hit_per_user_and_ndcg_with_binary_relevance():
    catalogue = pd.Index(["a", "b", "c", "d", "x"])
    top = np.array([["a", "b"], ["c", "d"], ["d", "a"]], dtype=object)
    truth = [{"b"}, {"x"}, {"d", "a", "c"}]
    got = demo.score(top, truth, catalogue)
    # user 1: hit at rank 2 -> 1/log2(3); user 2: no hit; user 3: hits at ranks 1 and 2 of an ideal 3
    ndcg3 = (1 + 1 / np.log2(3)) / (1 + 1 / np.log2(3) + 1 / np.log2(4))
    assert got["hit_rate_at_10"] == pytest.approx(2 / 3, abs=1e-6)
    assert got["ndcg_at_10"] == pytest.approx((1 / np.log2(3) + 0 + ndcg3) / 3, abs=1e-6)


def test_champion_on_a_day_is_the_last_promotion_serving_from_it():
    served = [demo.Served(1, date(2024, 11, 3), None), demo.Served(2, date(2024, 11, 4), None),
              demo.Served(4, date(2024, 11, 6), None)]
    assert demo.champion_on(served, date(2024, 11, 2)) is None
    assert demo.champion_on(served, date(2024, 11, 3)).version == 1
    assert demo.champion_on(served, date(2024, 11, 5)).version == 2
    assert demo.champion_on(served, date(2024, 11, 30)).version == 4


def test_the_oracle_ranks_by_the_true_purchase_propensity_and_follows_the_shift():
    sim = ShopSimulator(n_users=50, n_items=40, n_categories=4, seed=3, shift_date=date(2024, 11, 11), shift_strength=3.0)
    users = ["u03", "u17"]
    for day in (date(2024, 11, 10), date(2024, 11, 11)):
        top = demo.oracle_top(sim, day, users, k=5)
        for user, row in zip(users, top):
            u = list(sim.user_ids()).index(user)
            # second method: the propensity of each item, one by one, sorted by hand
            propensity = {sim.item_ids()[i]: sim.item_probabilities(day)[u, i] * sim.purchase_probabilities(day)[u, i]
                          for i in range(40)}
            assert list(row) == sorted(propensity, key=lambda i: -propensity[i])[:5]
    assert (demo.oracle_top(sim, date(2024, 11, 10), users) != demo.oracle_top(sim, date(2024, 11, 11), users)).any()


def _row(day: str, factory: float, static: float | None, oracle: float, promoted=False, drifted=False,
         live: float | None = None) -> dict:
    cell = lambda hit: None if hit is None else {"hit_rate_at_10": hit, "ndcg_at_10": hit / 2, "model_version": 1}
    return {"date": day, "n_users": 10, "factory": cell(factory), "static": cell(static), "oracle": cell(oracle),
            "factory_live": cell(factory if live is None else live),
            "drift": {"drifted": drifted, "psi_items": 0.1, "psi_categories": 0.5 if drifted else 0.01,
                      "js_distance_categories": 0.1}, "promoted": promoted}


def test_summary_takes_the_first_day_after_the_shift_and_the_static_maximum_after_it():
    rows = [
        _row("2024-11-09", 0.40, None, 0.50, promoted=True),
        _row("2024-11-10", 0.30, None, 0.60),
        _row("2024-11-11", 0.30, 0.30, 0.60, drifted=True),
        _row("2024-11-12", 0.45, 0.20, 0.50, promoted=True, drifted=True),
        _row("2024-11-13", 0.50, 0.25, 0.40, promoted=True),
    ]
    s = demo.summarise(rows, date(2024, 11, 11))
    assert s["first_day_after_shift"] == "2024-11-12"
    assert s["factory_vs_oracle_first_day_after"] == pytest.approx(0.9)
    assert s["static_vs_oracle_max_after"] == pytest.approx(0.625)  # 0.25 / 0.40 beats 0.20 / 0.50
    assert s["factory_vs_oracle_mean_before_shift"] == pytest.approx((0.8 + 0.5) / 2)
    assert s["promotions"] == ["2024-11-09", "2024-11-12", "2024-11-13"]
    assert s["drifted_days"] == ["2024-11-11", "2024-11-12"]


def test_summary_reads_the_targets_shift_day_live_first_day_after_recovery_and_week_before():
    rows = [_row(f"2024-11-{d:02d}", 0.40, None, 0.50) for d in range(3, 11)]  # ratio 0.8 all week
    rows[0]["factory"]["hit_rate_at_10"] = 0.10  # 11-03 is outside the 7 days before the shift
    rows += [
        _row("2024-11-11", 0.30, 0.30, 0.50, live=0.36, drifted=True),  # live 0.72
        _row("2024-11-12", 0.35, 0.30, 0.50),  # 0.70 < 0.72
        _row("2024-11-13", 0.38, 0.34, 0.50),  # 0.76: not within 0.02 of 0.8
        _row("2024-11-14", 0.39, 0.31, 0.50),  # 0.78: back within 0.02
    ]
    s = demo.summarise(rows, date(2024, 11, 11))
    assert s["factory_vs_oracle_week_before"] == pytest.approx(0.8)
    assert s["factory_live_vs_oracle_shift_day"] == pytest.approx(0.72)
    assert s["factory_vs_oracle_first_day_after"] == pytest.approx(0.70)
    assert (s["factory_recovered_on"], s["days_to_recover"]) == ("2024-11-14", 3)
    assert s["static_vs_oracle_max_after"] == pytest.approx(0.68)
    t = s["targets"]
    assert (t["factory_live_shift_day"]["met"], t["factory_first_day_after"]["met"], t["recovered_by_day_after"]["met"],
            t["static_after"]["met"], t["factory_week_before"]["met"]) == (True, False, True, False, True)
    # a real log: no oracle, so no ratio, but the hit-rates' means; a day without buyers scores None
    real = [dict(r, oracle=None) for r in rows] + [_row("2024-11-15", 0.5, 0.2, 0.5) | {"oracle": None}]
    real[-1]["factory"] = {"hit_rate_at_10": None, "ndcg_at_10": None, "model_version": 1}
    r = demo.summarise(real, date(2024, 11, 11))
    assert r["factory_vs_oracle_first_day_after"] is None and r["targets"]["factory_first_day_after"]["met"] is None
    assert r["factory_hit_rate_mean_after"] == pytest.approx((0.35 + 0.38 + 0.39) / 3, abs=1e-4)
    assert r["static_hit_rate_mean_after"] == pytest.approx((0.30 + 0.34 + 0.31 + 0.2) / 4, abs=1e-4)
    assert demo.score(np.empty((0, 10), dtype=object), [], pd.Index(["a"])) == {"hit_rate_at_10": None, "ndcg_at_10": None}


def test_plot_is_a_png_and_the_report_lands_as_asset_metadata(tmp_path):
    import matplotlib.image

    rows = [_row(f"2024-11-{d:02d}", 0.4, 0.3 if d >= 11 else None, 0.6, promoted=d % 2 == 0, drifted=d == 11)
            for d in range(5, 16)]
    png = demo.plot_png(rows, 1.5, date(2024, 11, 11))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.image.imread(BytesIO(png)).shape[:2] == (550, 900)  # 9 x 5.5 in at 100 dpi
    result = {"shift_date": "2024-11-11", "shift_strength": 1.5, "model_kind": "blend", "days": rows,
              "summary": demo.summarise(rows), "elapsed_s": 1.0}
    paths = demo.write_outputs(tmp_path, result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adaptation-1.5.csv", "adaptation-1.5.json", "adaptation-1.5.png"]
    assert json.loads(paths["json"].read_text())["days"] == rows
    assert len(pd.read_csv(paths["csv"])) == len(rows)
    result["outputs"] = {k: str(v) for k, v in paths.items()}
    instance = DagsterInstance.ephemeral()
    report(instance, result)
    event = instance.get_latest_materialization_event(AssetKey(ADAPTATION_DEMO))
    metadata = event.asset_materialization.metadata
    assert "data:image/png;base64," in metadata["plot"].value
    assert metadata["shift_strength"].value == 1.5
    assert "| 2024-11-15 |" in metadata["daily"].value


@pytest.mark.slow
def test_a_small_demo_runs_the_factory_reweights_after_drift_and_scores_three_models(tmp_path):
    options = tuple((k, v) for k, v in SMALL_SHOP.items() if k not in ("shift_date",))
    config = demo.DemoConfig(strength=3.0, start=date(2024, 10, 1), end=date(2024, 10, 30),
                             shift_date=date(2024, 10, 29), simulator=options)
    result = demo.run_strength(tmp_path, config)
    days = result["days"]
    # trainings 10-28 .. 10-30 serve 10-29 .. 10-31; the range ends on 10-30
    assert [r["date"] for r in days] == ["2024-10-29", "2024-10-30"]
    static, first, second = days[0]["static"], days[0]["factory"], days[1]["factory"]
    assert static["model_version"] == first["model_version"] == days[1]["static"]["model_version"]  # frozen at the shift
    assert second["model_version"] > first["model_version"] and days[1]["promoted"]
    assert days[0]["drift"]["drifted"], days[0]["drift"]  # the shift day's categories move
    # factory_live: the same champion plus the intraday path at 12:00; every model on the buyers from 12:00 on
    for r in days:
        assert r["factory_live"]["model_version"] == r["factory"]["model_version"]
        assert 0 < r["factory_live"]["active_users"] <= r["n_users"] and r["factory_live"]["n_events"] > 0
    assert days[0]["factory_live"]["drifted"]  # the shift day's morning already shows the new category mix
    # the oracle is the ceiling on average (day by day a model can be lucky)
    assert np.mean([r["oracle"]["hit_rate_at_10"] for r in days]) > np.mean([r["factory"]["hit_rate_at_10"] for r in days])
    # the candidate trained after the shift day down-weights the days before it
    from factory_assets.ml import registry

    with registry.connect(registry.default_url(demo.demo_home(tmp_path, 3.0) / "simulator")) as reg:
        by_day = {str(r.partition_day)[:10]: registry.version_row(reg, int(r.version))["manifest_path"]
                  for r in registry.versions(reg).itertuples()}
    assert read_manifest(by_day["2024-10-28"])["params"]["regime_start"] is None
    assert read_manifest(by_day["2024-10-29"])["params"]["regime_start"] == "2024-10-29"
    for kind in ("json", "csv", "png"):
        assert (tmp_path / "demo" / f"adaptation-3.{kind}").exists()
