"""``shadow_evaluation`` end to end: a trained champion, a hand-built shadow, logs replayed from the simulator."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import scipy.sparse as sp
import pytest
from dagster import DagsterInstance, build_sensor_context, materialize

from factory_assets.ml import served_log as serving_log
from factory_assets.feature_store import contract
from factory_assets.ml.defs.sensors import shadow_promoter
from factory_assets.ml.defs.shadow import SHADOW_EVALUATION, SHADOW_SCORES, score_rows, shadow_evaluation
from factory_assets.ml.recsys.artefact import load_manifest_model, save_model, write_manifest
from factory_assets.ml.recsys.model import BlendModel
from factory_assets.ml import registry
from factory_assets_tests import ml_helpers as ml
from factory_assets_tests.helpers import FIRST_DAY, days

CHAMPION_DAY = FIRST_DAY + timedelta(days=27)
REPLAY_DAYS = days(FIRST_DAY + timedelta(days=28), 3)
N_REQUESTS = 250


def _con(home: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(home / "simulator" / "warehouse.duckdb"))
    con.execute("SET TimeZone = 'UTC'")
    return con


@pytest.fixture
def home_copy(tmp_path_factory, tmp_path):
    """A private copy of a home with 36 ingested days (built by the DataOps assets, once per session)."""
    return ml.copy_home(ml.ingested(tmp_path_factory), tmp_path / "home")


class _Factory:
    """What these tests need of a home: its path, its event source and one Dagster instance for its runs."""

    def __init__(self, home: Path):
        self.home = home
        self.event_source = ml.data_resources(home)["event_source"].event_source
        self.instance = DagsterInstance.ephemeral()


def small_factory(home: Path) -> _Factory:
    return _Factory(home)


def _aliases(home: Path) -> Path:
    return home / "simulator" / "aliases"


def _ensure_ingested(factory: _Factory, home: Path, wanted: list[date]) -> None:
    """The replay days must have their purchases in the warehouse (ingest whatever is missing)."""
    with _con(home) as con:
        have = set(contract.ledger(con, contract.USER_ITEM_DAILY, min(wanted), max(wanted))["partition_day"])
    missing = [d for d in wanted if d not in have]
    if missing:
        ml.ingest(home, missing)


def _champion(home: Path, factory: _Factory) -> tuple[int, BlendModel]:
    result = ml.train(home, CHAMPION_DAY, factory.instance)
    assert result.success
    pointer = registry.read_alias(_aliases(home))
    assert pointer is not None
    return int(pointer["version"]), load_manifest_model(pointer["path"], "served", pointer["sha256"])


def _register_shadow(home: Path, model: BlendModel, label: str) -> int:
    """Save a hand-built model as a content-addressed artefact + manifest, register it and make it the shadow."""
    models_dir = home / "simulator" / "artefacts" / "models"
    path, sha = save_model(model, models_dir)
    manifest = {
        "format": "factory_assets.manifest/1", "source": "simulator", "partition": CHAMPION_DAY.isoformat(),
        "note": f"hand-built {label} shadow (test)",
        "artefacts": {"served": {"file": path.name, "sha256": sha, "bytes": path.stat().st_size}},
        "evaluation": {"model": {"ndcg_at_10": 0.0}},
    }
    manifest_path, manifest_sha = write_manifest(manifest, models_dir)
    with ml.connect(home) as con:
        version = registry.register(con, CHAMPION_DAY, manifest_path, manifest_sha, "candidate", label, {"evaluation": manifest["evaluation"]})
        registry.designate_shadow(con, _aliases(home), version, f"{label} shadow for the test")
    return version


def _oracle(champion: BlendModel, factory: _Factory) -> BlendModel:
    """The champion plus knowledge of the replay days' purchases: clearly better on live traffic."""
    events = pd.concat([factory.event_source.fetch_day(d).events for d in REPLAY_DAYS])
    bought = events[events["event_type"] == "purchase"].drop_duplicates(["user_id", "item_id"])
    rows, cols = champion.user_rows(bought["user_id"].to_numpy()), np.searchsorted(champion.item_ids, bought["item_id"].to_numpy().astype(str))
    keep = (rows >= 0) & (cols < len(champion.item_ids))
    keep[keep] &= champion.item_ids[cols[keep]] == bought["item_id"].to_numpy().astype(str)[keep]
    boost = sp.csr_matrix((np.full(keep.sum(), 50.0, dtype=np.float32), (rows[keep], cols[keep])), shape=champion.history.shape)
    return replace(champion, history=(champion.history + boost).tocsr().astype(np.float32))


def _anti_popular(champion: BlendModel) -> BlendModel:
    """Recommends the least popular items to everybody: clearly worse."""
    pop = champion.popularity.astype(np.float64)
    return replace(
        champion,
        user_factors=np.zeros_like(champion.user_factors),
        history=sp.csr_matrix(champion.history.shape, dtype=np.float32),
        popularity=(pop.max() - pop + 1e-3).astype(np.float32),
    )


def _replay(home: Path, factory: _Factory, champion: tuple[int, BlendModel], shadow: tuple[int, BlendModel], day: date) -> Path:
    log = serving_log.replay_from_simulator(factory.event_source, day, champion, shadow, N_REQUESTS, seed=3)
    return serving_log.write_log_file(log, serving_log.log_directory(home / "simulator"))


def _evaluate(factory: _Factory, day: date, **config):
    """Materialise the day's shadow_evaluation, then run one tick of the shadow_promoter sensor and execute
    its run request (a served_model run), as the daemon would; ``promoted``: whether that run moved the alias."""
    result = materialize(
        [shadow_evaluation], partition_key=day.isoformat(), resources=ml.resources(factory.home),
        run_config={"ops": {SHADOW_EVALUATION: {"config": config}}} if config else None, raise_on_error=False,
        instance=factory.instance,
    )
    assert result.success, [e.event_specific_data for e in result.all_events if e.is_failure]
    [mat] = result.get_asset_materialization_events()
    meta = {k: v.value for k, v in mat.materialization.metadata.items()}
    tick = shadow_promoter(build_sensor_context(instance=factory.instance, resources=ml.resources(factory.home)))
    meta["promoted"] = False
    if hasattr(tick, "run_config"):
        served = materialize(
            [ml.served_model], partition_key=tick.partition_key, run_config=tick.run_config,
            resources=ml.resources(factory.home), instance=factory.instance)
        meta["promoted"] = served.success
    return meta


def test_a_better_shadow_is_promoted_on_the_third_day(home_copy):
    factory = small_factory(home_copy)
    _ensure_ingested(factory, home_copy, REPLAY_DAYS)
    champion = _champion(home_copy, factory)
    oracle = _oracle(champion[1], factory)
    shadow_v = _register_shadow(home_copy, oracle, "better")

    verdicts = []
    for i, day in enumerate(REPLAY_DAYS):
        _replay(home_copy, factory, champion, (shadow_v, oracle), day)
        meta = _evaluate(factory, day)
        verdicts.append(meta["verdict"])
        assert meta["n_requests"] == N_REQUESTS and (meta["champion_version"], meta["shadow_version"]) == (champion[0], shadow_v)
        assert meta["shadow_ndcg_at_10"] > meta["champion_ndcg_at_10"]
        assert meta["promoted"] is (i == 2)
        assert "| day | champion | shadow |" in meta["history"]
    assert verdicts[0].startswith("keep collecting") and "1 of 3 days" in verdicts[0]
    assert "2 of 3 days" in verdicts[1]
    assert verdicts[2].startswith(f"promotion of v{shadow_v} to champion requested (was v{champion[0]})")

    pointer = registry.read_alias(_aliases(home_copy))
    assert pointer["version"] == shadow_v and pointer["previous_version"] == champion[0]
    assert registry.read_alias(_aliases(home_copy), registry.SHADOW) is None  # a promoted shadow stops shadowing
    with _con(home_copy) as con:  # the scores are the MLOps half's: never in the warehouse
        assert con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [SHADOW_SCORES]).fetchone()[0] == 0
    with ml.connect(home_copy) as con:
        scores = [(r.day, int(r.champion_version), int(r.shadow_version), int(r.n_requests))
                  for r in registry.shadow_scores(con).itertuples(index=False)]
        history = registry.history(con)
        statuses = dict(zip(registry.versions(con)["version"], registry.versions(con)["status"]))
    [promotion] = history[(history["version"] == shadow_v) & (history["action"] == "promoted")].itertuples()
    assert promotion.to_status == "champion" and promotion.from_status == "shadow"
    assert all(d.isoformat() in promotion.reason for d in REPLAY_DAYS) and "NDCG@10" in promotion.reason
    assert statuses[champion[0]] == "retired" and statuses[shadow_v] == "champion"
    assert [(d, c, s, n) for d, c, s, n in scores] == [(d, champion[0], shadow_v, N_REQUESTS) for d in REPLAY_DAYS]

    # Re-running the last day replaces its row and promotes nothing again (there is no shadow any more).
    again = _evaluate(factory, REPLAY_DAYS[-1])
    assert again["promoted"] is False and again["verdict"].startswith("no shadow designated")
    with ml.connect(home_copy) as con:
        table = registry.shadow_scores(con)
        assert (table["day"] == REPLAY_DAYS[-1]).sum() == 1
        assert registry.champion_stack(con).count(shadow_v) == 1
    latest = factory.instance.get_latest_materialization_event(ml.AssetKey("served_model"))
    assert latest.asset_materialization.metadata["version"].value == shadow_v  # the catalog names the new champion


def test_a_worse_shadow_is_never_promoted_and_empty_days_are_notes(home_copy):
    factory = small_factory(home_copy)
    _ensure_ingested(factory, home_copy, REPLAY_DAYS)

    # Before any shadow or log: a day materialises with 0 requests and says why.
    meta = _evaluate(factory, REPLAY_DAYS[0])
    assert meta["n_requests"] == 0 and meta["note"].startswith("no shadow designated and no served log")
    assert meta["promoted"] is False

    champion = _champion(home_copy, factory)
    worse = _anti_popular(champion[1])
    shadow_v = _register_shadow(home_copy, worse, "worse")
    for day in REPLAY_DAYS:
        _replay(home_copy, factory, champion, (shadow_v, worse), day)
        meta = _evaluate(factory, day, min_days=3, min_lift=0.0)
        assert meta["n_requests"] == N_REQUESTS and meta["promoted"] is False
        assert meta["shadow_ndcg_at_10"] < meta["champion_ndcg_at_10"]
        assert meta["verdict"].startswith("keep collecting")
    assert "did not beat the champion" in meta["verdict"]
    # Even with min_days=1 a worse shadow stays a shadow.
    assert _evaluate(factory, REPLAY_DAYS[-1], min_days=1)["promoted"] is False
    assert registry.read_alias(_aliases(home_copy))["version"] == champion[0]
    assert registry.read_alias(_aliases(home_copy), registry.SHADOW)["version"] == shadow_v

    # A shadow but no log for the day: 0 requests, a note, no error.
    quiet = REPLAY_DAYS[-1] + timedelta(days=1)
    _ensure_ingested(factory, home_copy, [quiet])
    meta = _evaluate(factory, quiet)
    assert meta["n_requests"] == 0 and meta["note"] == "no served log for this day: nothing to score"
    assert meta["shadow_version"] == shadow_v

    # An unreadable file in the log directory is reported, and the day is still scored.
    (serving_log.log_directory(home_copy / "simulator") / "broken.parquet").write_bytes(b"\x00garbage")
    meta = _evaluate(factory, REPLAY_DAYS[0])
    assert meta["n_requests"] == N_REQUESTS and any("broken.parquet" in p for p in meta["log_problems"])


def test_a_log_without_its_raw_day_fails_and_single_role_logs_are_notes(home_copy):
    factory = small_factory(home_copy)
    unknown = FIRST_DAY + timedelta(days=40)  # never ingested: its purchases are unknown
    rows = pd.DataFrame({
        "request_id": ["r1", "r1"], "ts": pd.to_datetime([f"{unknown} 10:00"] * 2, utc=True), "user_id": ["u001"] * 2,
        "model_version": [1, 1], "role": ["champion"] * 2, "item_id": ["i001", "i002"], "position": [1, 2], "score": [2.0, 1.0],
    })
    serving_log.write_log_file(rows, serving_log.log_directory(home_copy / "simulator"))
    result = materialize([shadow_evaluation], partition_key=unknown.isoformat(), resources=ml.resources(home_copy),
                         raise_on_error=False)
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert "user_item_daily" in failure.event_specific_data.error.message

    [row] = score_rows(unknown, serving_log.read_log(serving_log.log_directory(home_copy / "simulator"), unknown),
                       rows.iloc[0:0][["user_id", "item_id", "ts"]], champion=1, shadow=None)
    assert row["n_requests"] == 0 and row["n_excluded"] == 1
    assert row["note"] == "the served log has no request logged for both roles (1 single-role request(s)): nothing to score"
