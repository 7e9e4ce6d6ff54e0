"""The factory on a real shop's log: four weeks of UCI Online Retail, autumn 2011."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from factory_assets.platform.partitions import WINDOW_DAYS
from factory_assets.ml import registry
from factory_assets.resources import Factory
from factory_assets_tests.helpers import days, ingest, require_shared, train


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_model_is_served_and_beats_both_baselines(tmp_path):
    path = require_shared("online-retail", "online_retail.parquet")
    last = date(2011, 11, 30)
    factory = Factory(home=str(tmp_path), source="online_retail", source_path=str(path))
    ingest(factory, days(last - timedelta(days=WINDOW_DAYS - 1), WINDOW_DAYS))
    result = train(factory, last)
    assert result.success
    pointer = registry.read_alias(tmp_path / "online_retail" / "aliases")
    assert pointer is not None and pointer["partition_day"] == last.isoformat()
    with registry.connect(registry.default_url(tmp_path / "online_retail")) as reg:
        evaluation = registry.version_row(reg, pointer["version"])["metrics"]["evaluation"]
    model = evaluation["model"]["ndcg_at_10"]
    assert evaluation["model"]["n_users"] > 100
    assert model > evaluation["baselines"]["repeat"]["ndcg_at_10"]
    assert model > evaluation["baselines"]["popularity"]["ndcg_at_10"]
