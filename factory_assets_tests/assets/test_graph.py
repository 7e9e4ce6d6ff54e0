"""The real asset graph, run in-process with ``materialize()`` on a small simulated shop."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from pathlib import Path
from datetime import date, timedelta

import duckdb
import numpy as np
from dagster import AssetKey, DagsterInstance

import factory_assets.ml.candidate_day as model_assets
from factory_assets.platform.partitions import DAILY, ROLLING_WINDOW, WINDOW_DAYS
from factory_assets.ml import registry
from factory_assets.resources import PromotionPolicy
from factory_assets.data.sources.base import DayBatch
from factory_assets.data.sources.schema import empty_events
from factory_assets.data.sources.simulator import ShopSimulator
from factory_assets_tests.helpers import FIRST_DAY, INGEST, SMALL_SHOP, days, ingest, run, small_factory, train

TRAIN_DAY = FIRST_DAY + timedelta(days=WINDOW_DAYS - 1)  # the first day with a full window


def _con(home):
    con = duckdb.connect(str(home / "simulator" / "warehouse.duckdb"))
    con.execute("SET TimeZone = 'UTC'")
    return con


def _reg(home):
    """A connection to ``home``'s model registry (its own SQLite store)."""
    return registry.connect(registry.default_url(home / "simulator"))


def _check(result, name: str):
    [evaluation] = [e for e in result.get_asset_check_evaluations() if e.check_name == name]
    return evaluation


def _materialized(result) -> set[str]:
    return {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}


def test_partitions_written_match_the_source_and_rematerialising_replaces(home_copy):
    day = FIRST_DAY + timedelta(days=3)
    expected = ShopSimulator(**{**SMALL_SHOP, "shift_date": date(2024, 11, 11)}).fetch_day(day).events
    with _con(home_copy) as con:
        before = con.execute("SELECT count(*), count(DISTINCT event_id) FROM raw_events WHERE partition_day = ?", [day]).fetchone()
        version_before = con.execute(
            "SELECT data_version FROM partition_ledger WHERE asset = 'raw_events' AND partition_day = ?", [day]
        ).fetchone()[0]
        n_days = con.execute("SELECT count(DISTINCT partition_day) FROM raw_events").fetchone()[0]
    assert before == (len(expected), len(expected))
    assert n_days == 36

    result = run(small_factory(home_copy), day, INGEST)
    assert result.success
    with _con(home_copy) as con:
        after = con.execute("SELECT count(*), count(DISTINCT event_id) FROM raw_events WHERE partition_day = ?", [day]).fetchone()
        version_after = con.execute(
            "SELECT data_version FROM partition_ledger WHERE asset = 'raw_events' AND partition_day = ?", [day]
        ).fetchone()[0]
    assert after == before  # replaced, not appended
    assert version_after == version_before  # same content, same data version
    [mat] = [e for e in result.get_asset_materialization_events() if e.asset_key == AssetKey("raw_events")]
    assert mat.materialization.tags["dagster/data_version"] == version_before
    assert all(e.passed for e in result.get_asset_check_evaluations())


def test_rolling_window_maps_and_loads_exactly_28_days(home_copy):
    day = FIRST_DAY + timedelta(days=35)
    upstream = ROLLING_WINDOW.get_upstream_mapped_partitions_result_for_partitions(
        DAILY.subset_with_partition_keys([day.isoformat()]), DAILY, DAILY
    ).partitions_subset.get_partition_keys()
    assert sorted(upstream) == [d.isoformat() for d in days(day - timedelta(days=27), 28)]

    result = train(small_factory(home_copy), day)
    assert result.success
    with _reg(home_copy) as reg:  # the window manifest is the MLOps half's: in the registry's store
        window = registry.load_window_manifest(reg, day)
        row = registry.latest_for_day(reg, day)
    with _con(home_copy) as con:  # ... and no longer in the warehouse
        assert con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'training_windows'").fetchone()[0] == 0
    assert window["complete"] and window["start"] == (day - timedelta(days=27)).isoformat() and window["end"] == day.isoformat()
    for view in ("user_item_daily", "item_daily"):
        assert sorted(i["partition"] for i in window["inputs"] if i["asset"] == view) == sorted(upstream)
    manifest = json.loads(open(row["manifest_path"]).read())
    assert manifest["window"]["inputs"] == window["inputs"]
    assert manifest["artefacts"]["served"]["trained_on"] == [min(upstream), max(upstream)]
    assert manifest["evaluation"]["model"]["train_days"] == [min(upstream), (day - timedelta(days=7)).isoformat()]
    assert manifest["evaluation"]["model"]["test_days"] == [(day - timedelta(days=6)).isoformat(), day.isoformat()]
    # the evaluation report in the UI: numbers, the segment table and the plot, embedded and next to the manifest
    [mat] = [e.materialization for e in result.get_asset_materialization_events() if e.asset_key == AssetKey("candidate_model")]
    plot = Path(mat.metadata["evaluation_plot_path"].value)
    assert mat.metadata["evaluation_plot"].value == f"![NDCG@10 by activity segment](data:image/png;base64,{base64.b64encode(plot.read_bytes()).decode()})"
    assert plot == home_copy / "simulator" / "artefacts" / "reports" / f"{row['manifest_sha256']}.png"
    assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    report_md = mat.metadata["evaluation_report"].value
    assert f"(data:image/png;base64,{base64.b64encode(plot.read_bytes()).decode()})" in report_md
    assert "| 30+ |" in report_md and "| baseline: repeat |" in report_md
    assert mat.metadata["activity_segments"].value == manifest["evaluation"]["segments"]
    assert mat.metadata["gini_at_10"].value == manifest["evaluation"]["model"]["gini_at_10"]


def test_missing_day_blocks_training_and_nothing_is_served(home_copy):
    missing = FIRST_DAY + timedelta(days=10)
    with _con(home_copy) as con:  # forget one day's features, as if it had never been materialised
        con.execute("DELETE FROM partition_ledger WHERE asset = 'user_item_daily' AND partition_day = ?", [missing])
        con.execute("DELETE FROM user_item_daily WHERE day = ?", [missing])
    result = train(small_factory(home_copy), TRAIN_DAY)
    check = _check(result, "window_complete")
    assert not check.passed
    assert missing.isoformat() in str(check.metadata["missing"].value)
    assert _materialized(result) == {"training_window"}
    with _con(home_copy) as con, _reg(home_copy) as reg:
        assert registry.versions(reg).empty
    assert registry.read_alias(home_copy / "simulator" / "aliases") is None


def test_empty_day_is_a_complete_partition(tmp_path, monkeypatch):
    closed = FIRST_DAY + timedelta(days=5)  # a Sunday: the shop is closed
    real_fetch = ShopSimulator.fetch_day

    def fetch_closed_on_sundays(self, day):
        return DayBatch(events=empty_events()) if day.weekday() == 6 else real_fetch(self, day)

    monkeypatch.setattr(ShopSimulator, "fetch_day", fetch_closed_on_sundays)
    factory = small_factory(tmp_path)
    ingest(factory, days(FIRST_DAY, WINDOW_DAYS))
    with _con(tmp_path) as con:
        ledger = con.execute(
            "SELECT row_count FROM partition_ledger WHERE asset = 'raw_events' AND partition_day = ?", [closed]
        ).fetchone()
    assert ledger == (0,)
    result = train(factory, TRAIN_DAY)
    assert _check(result, "window_complete").passed
    assert "candidate_model" in _materialized(result)


def _inject(monkeypatch, corrupt):
    """Make the next candidate's artefacts come out of ``corrupt(result)``."""
    real = model_assets.train_candidate

    def train_then_corrupt(*args, **kwargs):
        return corrupt(real(*args, **kwargs))

    monkeypatch.setattr(model_assets, "train_candidate", train_then_corrupt)


def test_promotion_then_nan_model_is_rejected_and_champion_stays(home_copy, monkeypatch):
    factory = small_factory(home_copy)
    instance = DagsterInstance.ephemeral()
    first = train(factory, TRAIN_DAY, instance)
    assert first.success and "served_model" in _materialized(first)
    aliases = home_copy / "simulator" / "aliases"
    champion = registry.read_alias(aliases)
    assert champion["version"] == 1

    def nan_factors(result):
        factors = result.served_model.item_factors.copy()
        factors[0, 0] = np.nan
        return replace(result, served_model=replace(result.served_model, item_factors=factors))

    _inject(monkeypatch, nan_factors)
    second = train(factory, TRAIN_DAY + timedelta(days=1), instance)
    safe = _check(second, "safe_to_serve")
    assert not safe.passed and "non-finite" in safe.description
    assert "served_model" not in _materialized(second)
    assert registry.read_alias(aliases) == champion  # untouched, byte for byte the same pointer
    with _reg(home_copy) as reg:
        statuses = dict(registry.versions(reg)[["version", "status"]].itertuples(index=False))
    assert statuses == {1: "champion", 2: "rejected"}


def test_worse_model_is_rejected_by_the_baseline_gate_and_champion_stays(home_copy, monkeypatch):
    factory = small_factory(home_copy)
    instance = DagsterInstance.ephemeral()
    assert train(factory, TRAIN_DAY, instance).success
    aliases = home_copy / "simulator" / "aliases"
    champion = registry.read_alias(aliases)

    def worse(result):  # random factors and no history: a model that knows nothing
        from factory_assets.ml.recsys.evaluation import evaluate, model_scores

        rng = np.random.default_rng(0)
        broken = replace(
            result.eval_model.als_only(),
            user_factors=rng.normal(size=result.eval_model.user_factors.shape).astype(np.float32),
        )
        report = evaluate(model_scores(broken, result.eval_set), result.eval_set)
        return replace(result, eval_model=broken, model_report=report)

    _inject(monkeypatch, worse)
    result = train(factory, TRAIN_DAY + timedelta(days=1), instance)
    assert not _check(result, "beats_baseline").passed
    assert not _check(result, "not_worse_than_champion").passed
    assert "served_model" not in _materialized(result)
    assert registry.read_alias(aliases) == champion


def test_successive_days_promote_and_keep_history(home_copy):
    factory = small_factory(home_copy, policy=PromotionPolicy(champion_tolerance=0.05))
    instance = DagsterInstance.ephemeral()
    for offset in range(3):
        assert train(factory, TRAIN_DAY + timedelta(days=offset), instance).success
    with _reg(home_copy) as reg:
        versions = registry.versions(reg)
        history = registry.history(reg)
        decisions = registry.decisions(reg)
    assert list(versions["version"]) == [1, 2, 3]
    promoted = history[history["action"] == "promoted"]["version"].tolist()
    assert promoted == [1, 2, 3]
    assert list(versions["status"]) == ["retired", "retired", "champion"]
    assert list(decisions["verdict"]) == ["promote"] * 3
    pointer = registry.read_alias(home_copy / "simulator" / "aliases")
    assert pointer["version"] == 3 and pointer["previous_version"] == 2
    assert pointer["partition_day"] == (TRAIN_DAY + timedelta(days=2)).isoformat()


def test_a_candidate_not_clearly_as_good_as_the_champion_becomes_the_shadow(home_copy):
    # tolerance -1 demands the whole interval be above +1 NDCG: no candidate can be clearly better
    factory = small_factory(home_copy, policy=PromotionPolicy(champion_tolerance=-1.0))
    assert train(factory, TRAIN_DAY).success  # no champion yet: promoted
    second = train(factory, TRAIN_DAY + timedelta(days=1))
    gate = _check(second, "not_worse_than_champion")
    assert not gate.passed and "CI [" in gate.description
    low, high = gate.metadata["ci_low"].value, gate.metadata["ci_high"].value
    assert low <= gate.metadata["ndcg_difference"].value <= high
    assert "served_model" not in _materialized(second)
    aliases = home_copy / "simulator" / "aliases"
    assert registry.read_alias(aliases)["version"] == 1
    assert registry.read_alias(aliases, registry.SHADOW)["version"] == 2
    with _reg(home_copy) as reg:
        assert registry.version_row(reg, 2)["status"] == "shadow"
        decision = reg.exec_driver_sql("SELECT verdict, markdown FROM promotion_decisions WHERE version = 2").fetchone()
    assert decision[0] == "shadow" and "Promotion decision" in decision[1] and "champion_tolerance" in decision[1]


def test_retraining_from_a_manifest_reproduces_the_artefacts_bit_for_bit(home_copy):
    from factory_assets.ml.recsys.artefact import read_manifest
    from factory_assets.ml.training import retrain_from_manifest

    assert train(small_factory(home_copy), TRAIN_DAY).success
    with _con(home_copy) as con, _reg(home_copy) as reg:
        row = registry.version_row(reg, 1)
        manifest = read_manifest(row["manifest_path"], row["manifest_sha256"])
        digests = retrain_from_manifest(con, manifest)
    assert digests == {role: manifest["artefacts"][role]["sha256"] for role in ("eval", "served")}
