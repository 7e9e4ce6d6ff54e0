"""Issue 6's measure on real data: the served ranker vs the baselines on one Online Retail split (a guard, not the
benchmark: ``benchmarks/model_quality.py`` runs all three splits and MovieLens)."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from datetime import date, timedelta

import pytest

from factory_assets.ml.recsys.model import ModelParams
from factory_assets.platform.settings import SOURCE_HISTORY_DAYS
from factory_assets.ml.training import train_candidate
from factory_assets_tests.helpers import REPO_ROOT, require_shared


def _benchmark():
    spec = importlib.util.spec_from_file_location("model_quality", REPO_ROOT / "benchmarks" / "model_quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_long_history_ranker_clears_the_best_baseline_by_ten_percent():
    path = require_shared("online-retail", "online_retail.parquet")
    daily = _benchmark().online_retail_daily(path)
    end = date(2011, 10, 31)
    start = end - timedelta(days=27)
    window = daily[(daily["day"] >= start) & (daily["day"] <= end)].reset_index(drop=True)
    days = SOURCE_HISTORY_DAYS["online_retail"]
    history = daily[(daily["day"] >= start - timedelta(days=days)) & (daily["day"] <= end) & (daily["n_conversions"] > 0)]
    params = ModelParams(history_days=days)
    with_history = train_candidate(window, (start, end), 7, params, history=history).evaluation()
    without = train_candidate(window, (start, end), 7, replace(params, history_days=0)).evaluation()
    best = max(b["ndcg_at_10"] for b in with_history["baselines"].values())
    assert with_history["model"]["n_users"] == without["model"]["n_users"] > 100  # the same evaluated users
    assert with_history["model"]["ndcg_at_10"] >= 1.1 * best
    assert with_history["model"]["ndcg_at_10"] >= with_history["references"]["repeat_history"]["ndcg_at_10"]
    assert without["model"]["ndcg_at_10"] < with_history["model"]["ndcg_at_10"]
    assert "repeat_history" not in without["references"]
