"""The live path end to end: the ``live_state`` asset writes today's state, the service serves it next to the champion.

Hand-built champions (``conftest.hand_model``: users ``u0..u5``, items ``i0..i7``, popularity ``i0`` first, ``i7``
last; ``u0`` bought ``i0`` twice and ``i3``) and hand-built intraday rows.  The reference lists are computed here from
dense score rows (``BlendModel.scores`` / ``recsys.live.live_scores`` plus the trend), independently of the
service's shortcuts (precomputed ranker lists, the trended shared ranking).
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from dagster import AssetKey, AssetMaterialization, DagsterInstance, evaluate_automation_conditions, materialize
from dagster._core.test_utils import freeze_time
from prometheus_client.parser import text_string_to_metric_families

from factory_assets.ml.defs.live import LIVE_STATE, live_state
from factory_assets.ml.recsys.artefact import atomic_write_bytes, save_model, write_manifest
from factory_assets.ml.recsys.live import LiveState, build_live_state, live_scores, load_state, save_state
from factory_assets.ml.resources import ml_resources
from factory_assets.platform.settings import HomeLayout
from factory_assets.serving.live import LiveView
from factory_assets.serving.scorer import LoadedModel
from factory_assets_tests.service.conftest import SOURCE, TOKEN, hand_model, hand_ranker_model, publish

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TODAY = date(2024, 11, 12)
AS_OF = datetime(2024, 11, 12, 9, 30, tzinfo=timezone.utc)
USERS = [f"u{i}" for i in range(6)] + ["stranger"]
ROW_COLUMNS = ["user_id", "item_id", "weight", "n_conversions"]


def status(drifted: bool = False) -> dict:
    return {"day": TODAY, "as_of": AS_OF, "n_events": 3, "data_version": "d" * 64, "psi_categories": None,
            "drifted": drifted}


def state_for(model, version: int, sha256: str, today: list[tuple], trend: np.ndarray | None = None) -> LiveState:
    """A state of ``model`` from today's ``(user, item, weight, n_conversions)`` rows (no window rows)."""
    rows = pd.DataFrame(today, columns=ROW_COLUMNS).assign(day=TODAY)
    window = pd.DataFrame({"day": [], "user_id": [], "item_id": [], "weight": []})
    state = build_live_state(model, version, sha256, status(), rows, window, pd.Series(dtype=float), None)
    return state if trend is None else replace(state, trend=trend.astype(np.float32))


def state_path(home: Path) -> Path:
    return HomeLayout(Path(home), SOURCE).live_state


def lists(client, users=USERS, **params) -> dict[str, bytes]:
    return {u: client.get(f"/recommendations/{u}", params={"k": 8, **params}).content for u in users}


def item_ids(body: bytes) -> list[str]:
    return [x["item_id"] for x in json.loads(body)["items"]]


def samples(text: str) -> dict[str, float]:
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples if not s.labels}


def reference(scores: np.ndarray, k: int, exclude: np.ndarray | None = None) -> tuple[list[int], np.ndarray]:
    """Top-``k`` of one dense row, ties towards the lower item index, ``exclude`` positions left out."""
    s = scores.astype(np.float64).copy()
    if exclude is not None:
        s[exclude] = -np.inf
    order = np.lexsort((np.arange(len(s)), -s))
    order = [int(i) for i in order if np.isfinite(s[i])][:k]
    return order, s[order]


# --------------------------------------------------------------------------------------------- the HTTP service


def test_an_item_bought_today_moves_up_for_that_user_and_nobody_elses_list_changes(home, make_client):
    model = hand_model()
    pointer = publish(home, model, 1)
    client = make_client()
    before, before_excl = lists(client), lists(client, exclude_purchased="true")
    assert client.get("/readyz").json()["live"] is None
    assert item_ids(before["u2"]).index("i7") > 0  # the least popular item, u2 never bought it

    state = state_for(model, 1, pointer["sha256"], [("u2", "i7", 5.0, 1), ("u2", "i6", 1.0, 0)])
    save_state(state, state_path(home))
    assert client.post("/admin/reload", headers=AUTH).status_code == 200

    ready = client.get("/readyz").json()
    assert ready["live"] == state.describe() and ready["live"]["users"] == 1 and ready["live_detail"] is None
    after, after_excl = lists(client), lists(client, exclude_purchased="true")
    assert item_ids(after["u2"])[0] == "i7"  # today's purchase: its history term and today's weight
    assert "i7" not in item_ids(after_excl["u2"])  # bought today counts as purchased
    for user in USERS:
        if user != "u2":  # not active today, no trend: the nightly bytes
            assert after[user] == before[user] and after_excl[user] == before_excl[user], user
    # the scores are recsys.live's, through the fast path and the FastAPI route alike
    want = live_scores(model, np.asarray([2]), state, state.rows(["u2"]))[0]
    body = json.loads(after["u2"])
    np.testing.assert_allclose([x["score"] for x in body["items"]],
                               want[[int(i[1:]) for i in item_ids(after["u2"])]], rtol=1e-12)
    routed = client.get("/recommendations/u2", params={"k": 8, "unrelated": 1}).content
    assert routed == after["u2"]
    batch = client.post("/recommendations", json={"user_ids": ["u2", "u3"], "k": 8}).json()
    assert [r["items"] for r in batch["results"]] == [json.loads(after[u])["items"] for u in ("u2", "u3")]
    assert set(body) == {"user_id", "items", "model_version", "fallback"}  # the response schema is unchanged

    got = samples(client.get("/metrics").text)
    assert got["factory_serve_live_state_loaded"] == 1 and got["factory_serve_live_state_users"] == 1
    assert got["factory_serve_live_state_age_seconds"] >= (datetime.now(timezone.utc) - AS_OF).total_seconds() - 60
    assert got["factory_serve_live_lists_total"] == 4  # u2 twice on GET, the route once, once in the batch


def test_a_user_new_today_is_scored_live_not_as_a_fallback(home, make_client):
    model = hand_model()
    pointer = publish(home, model, 1)
    save_state(state_for(model, 1, pointer["sha256"], [("newcomer", "i6", 5.0, 1)]), state_path(home))
    client = make_client()
    body = client.get("/recommendations/newcomer").json()
    assert body["fallback"] is False and body["items"][0]["item_id"] == "i6"
    assert client.get("/recommendations/someone-else").json()["fallback"] is True


@pytest.mark.parametrize("other", ["version", "sha256"])
def test_a_state_built_for_another_model_is_ignored(home, make_client, other):
    model = hand_model()
    pointer = publish(home, model, 1)
    version, sha = (2, pointer["sha256"]) if other == "version" else (1, "0" * 64)
    save_state(state_for(model, version, sha, [("u2", "i7", 5.0, 1)]), state_path(home))
    client = make_client()
    ready = client.get("/readyz").json()
    assert ready["live"] is None and "ignored" in ready["live_detail"]
    assert item_ids(client.get("/recommendations/u2").content)[0] != "i7"
    assert samples(client.get("/metrics").text)["factory_serve_live_state_loaded"] == 0


def test_a_new_champion_drops_the_old_state_until_its_own_arrives(home, make_client):
    first = hand_model(seed=1)
    pointer = publish(home, first, 1)
    save_state(state_for(first, 1, pointer["sha256"], [("u2", "i7", 5.0, 1)]), state_path(home))
    client = make_client()
    assert client.get("/readyz").json()["live"]["model_version"] == 1
    second = hand_model(seed=2)
    pointer = publish(home, second, 2)
    client.post("/admin/reload", headers=AUTH)
    ready = client.get("/readyz").json()
    assert ready["champion"]["version"] == 2 and ready["live"] is None and "built for v1" in ready["live_detail"]
    nightly = client.get("/recommendations/u2").content
    save_state(state_for(second, 2, pointer["sha256"], [("u2", "i7", 5.0, 1)]), state_path(home))
    client.app.state.service.watcher.check()  # the watcher's poll: the file's stamp changed
    assert client.get("/readyz").json()["live"]["model_version"] == 2
    assert item_ids(client.get("/recommendations/u2").content)[0] == "i7" != item_ids(nightly)[0]


def test_a_corrupt_state_file_logs_one_line_and_the_nightly_scores_keep_serving(home, make_client, caplog):
    model = hand_model()
    pointer = publish(home, model, 1)
    clean = make_client(home=home)
    nightly = lists(clean)
    path = state_path(home)
    atomic_write_bytes(path, b"PK\x03\x04 this is not an npz")
    with caplog.at_level(logging.INFO, logger="factory.serve"):
        client = make_client()
        watcher = client.app.state.service.watcher
        watcher.check()
        watcher.check()  # the same broken file: nothing new to say
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0].getMessage() and str(path) in errors[0].getMessage()
    ready = client.get("/readyz").json()
    assert ready["ready"] is True and ready["live"] is None and "unusable" in ready["live_detail"]
    assert lists(client) == nightly
    assert samples(client.get("/metrics").text)["factory_serve_live_state_failures_total"] == 1
    # a good file replaces it: served; broken again: back to the nightly scores
    save_state(state_for(model, 1, pointer["sha256"], [("u2", "i7", 5.0, 1)]), path)
    watcher.check()
    assert client.get("/readyz").json()["live"] is not None
    path.write_bytes(b"")
    watcher.check()
    assert client.get("/readyz").json()["live"] is None and lists(client) == nightly


# --------------------------------------------------------------------------------------------- the scorer


@pytest.mark.parametrize("kind", ["blend", "ranker"])
@pytest.mark.parametrize("with_trend", [False, True], ids=["no-trend", "trend"])
def test_live_lists_equal_dense_scoring(kind, with_trend):
    """Every user's live list against top-k of a dense row: live users ``live_scores``, the others the model's
    scores (a ranker's: the whole model in one call, as its precompute) plus the trend."""
    model = hand_model(seed=4, n_users=20, n_items=30) if kind == "blend" else \
        hand_ranker_model(seed=1, n_users=20, n_items=30, n_candidates=3)
    loaded = LoadedModel(model, 1, "s" * 64, "m.json")
    trend = np.random.default_rng(3).normal(scale=0.5, size=30) if with_trend else None
    today = [("u3", "i25", 5.0, 1), ("u3", "i2", 1.0, 0), ("u11", "i0", 3.0, 0), ("newbie", "i17", 5.0, 1)]
    state = state_for(model, 1, "s" * 64, today, trend)
    view = LiveView.build(state, loaded)
    assert (view.trend is None) == (not with_trend)
    users = [str(u) for u in model.user_ids] + ["newbie", "stranger"]
    full = model.scores(np.arange(len(model.user_ids)))
    cold = model.scores(np.array([-1]))[0]
    extra = np.zeros(30) if trend is None else trend.astype(np.float32).astype(np.float64)
    for k in (1, 4, 30):
        for exclude in (False, True):
            got = loaded.recommend(users, k, exclude, view)
            plain = loaded.recommend(users, k, exclude)
            for user, rec, nightly in zip(users, got, plain):
                row, live_row = int(model.user_rows([user])[0]), int(state.rows([user])[0])
                bought = np.zeros(0, dtype=np.int64)
                if exclude and row >= 0:
                    h = model.history
                    bought = h.indices[h.indptr[row]:h.indptr[row + 1]]
                if live_row >= 0:
                    dense = live_scores(model, np.asarray([row]), state, np.asarray([live_row]))[0]
                    if exclude:
                        bought = np.union1d(bought, state.conversions[live_row].indices)
                else:
                    dense = (full[row] if row >= 0 else cold) + extra
                want, scores = reference(dense, k, bought if exclude else None)
                assert rec.item_ids == [str(model.item_ids[i]) for i in want], (user, k, exclude)
                np.testing.assert_allclose(rec.scores, scores, rtol=1e-9, atol=1e-9)
                assert rec.live == (live_row >= 0) and rec.fallback == (row < 0 and live_row < 0)
                if live_row < 0 and not with_trend:  # everything else: bit-identical to the nightly path
                    assert (rec.item_ids, rec.scores, rec.fallback) == (nightly.item_ids, nightly.scores, nightly.fallback)


def test_a_state_that_does_not_fit_the_champion_is_refused():
    model = hand_model()
    loaded = LoadedModel(model, 1, "s" * 64, "m.json")
    state = state_for(model, 1, "s" * 64, [("u2", "i7", 5.0, 1)])
    with pytest.raises(ValueError, match="built for v2"):
        LiveView.build(replace(state, model_version=2), loaded)
    with pytest.raises(ValueError, match="trend has shape"):
        LiveView.build(replace(state, trend=np.zeros(3, dtype=np.float32)), loaded)
    with pytest.raises(ValueError, match="factors has shape"):
        LiveView.build(replace(state, factors=np.zeros((1, 5), dtype=np.float32)), loaded)
    with pytest.raises(ValueError, match="non-finite"):
        LiveView.build(replace(state, trend=np.full(8, np.nan, dtype=np.float32)), loaded)


# --------------------------------------------------------------------------------------------- the Dagster asset


def publish_trained(home: Path, model, version: int, start: date, end: date) -> dict:
    """:func:`conftest.publish` with the manifest's training ``window`` (what ``live_state`` reads)."""
    models = Path(home) / SOURCE / "artefacts" / "models"
    models.mkdir(parents=True, exist_ok=True)
    path, digest = save_model(model, models)
    manifest = {"format": "factory_assets.manifest/1", "window": {"start": start.isoformat(), "end": end.isoformat()},
                "artefacts": {"served": {"file": path.name, "sha256": digest,
                                         "trained_on": [start.isoformat(), end.isoformat()]}}}
    manifest_path, manifest_sha = write_manifest(manifest, models)
    pointer = {"alias": "champion", "version": version, "path": str(manifest_path), "sha256": manifest_sha,
               "partition_day": end.isoformat()}
    atomic_write_bytes(Path(home) / SOURCE / "aliases" / "champion.json", json.dumps(pointer).encode())
    return pointer


def build_warehouse(home: Path) -> None:
    """A DuckDB warehouse with two days of ``user_item_daily`` (u2 and u3 on 11-10 and 11-11) and today's intraday
    tables from three events before 09:30 (u2 buys i7, views i6; u3 views i1), one after it."""
    from factory_assets.data.intraday import build_intraday
    from factory_assets.data.resources import ensure_tables

    layout = HomeLayout(Path(home), SOURCE).ensure()
    con = duckdb.connect(str(layout.warehouse))
    try:
        con.execute("SET TimeZone = 'UTC'")
        ensure_tables(con)
        days = [TODAY - timedelta(days=2), TODAY - timedelta(days=1), TODAY - timedelta(days=1)]
        daily = pd.DataFrame({  # a cart, then two views
            "day": days, "user_id": ["u2", "u2", "u3"], "item_id": ["i5", "i5", "i1"], "n_views": [0, 1, 1],
            "n_carts": [1, 0, 0], "n_conversions": [0, 0, 0], "n_returns": [0, 0, 0], "quantity": [0, 0, 0],
            "value": [0.0, 0.0, 0.0], "weight": [3.0, 1.0, 1.0],
            "last_ts": [datetime(d.year, d.month, d.day, 12, tzinfo=timezone.utc) for d in days]})
        con.register("daily_rows", daily)
        con.execute("INSERT INTO user_item_daily BY NAME SELECT * FROM daily_rows")
        at = lambda h: datetime(2024, 11, 12, tzinfo=timezone.utc) + timedelta(hours=h)  # noqa: E731
        events = pd.DataFrame({
            "event_id": ["e1", "e2", "e3", "e4"], "user_id": ["u2", "u2", "u3", "u4"],
            "item_id": ["i7", "i6", "i1", "i0"], "event_type": ["purchase", "view", "view", "purchase"],
            "ts": [at(8), at(8.5), at(9), at(10)], "quantity": [1, 1, 1, 1], "value": [9.5, 0.0, 0.0, 3.0]})
        build_intraday(con, TODAY, AS_OF, events, None)
    finally:
        con.close()


def test_the_live_state_asset_writes_the_file_the_service_serves(home, make_client):
    model = hand_model()
    resources = ml_resources(home=str(home), source=SOURCE)
    # no champion yet: materialised, nothing written, and it says why
    result = materialize([live_state], resources=resources)
    assert result.success
    metadata = result.asset_materializations_for_node(LIVE_STATE)[0].metadata
    assert metadata["written"].value is False and "no champion" in metadata["reason"].value

    pointer = publish_trained(home, model, 7, TODAY - timedelta(days=28), TODAY - timedelta(days=1))
    result = materialize([live_state], resources=resources)
    metadata = result.asset_materializations_for_node(LIVE_STATE)[0].metadata
    assert metadata["written"].value is False and "intraday" in metadata["reason"].value

    build_warehouse(home)
    result = materialize([live_state], resources=resources)
    assert result.success
    metadata = result.asset_materializations_for_node(LIVE_STATE)[0].metadata
    path = state_path(home)
    assert metadata["written"].value is True and metadata["path"].value == str(path)
    state = load_state(path)
    assert state.model_version == 7 and state.model_sha256 == pointer["sha256"]
    assert state.day == TODAY and state.as_of == AS_OF
    assert state.user_ids.tolist() == ["u2", "u3"]  # u4's event is after as_of
    assert metadata["users"].value == 2 and metadata["model_version"].value == 7
    assert state.conversions[0, 7] == 1 and state.today[0, 7] == 5.0 and state.today[0, 6] == 1.0
    assert metadata["summary"].value["window"] == [(TODAY - timedelta(days=28)).isoformat(),
                                                   (TODAY - timedelta(days=1)).isoformat()]
    # the folded vector of u2 saw the window's i5 rows (2 days) and today's: not today's alone
    without_window = state_for(model, 7, pointer["sha256"], [("u2", "i7", 5.0, 1), ("u2", "i6", 1.0, 0),
                                                              ("u3", "i1", 1.0, 0)])
    assert not np.allclose(state.factors[0], without_window.factors[0])

    client = make_client()
    assert client.get("/readyz").json()["live"] == state.describe()
    assert item_ids(client.get("/recommendations/u2").content)[0] == "i7"
    # a champion trained through today already holds today's events: no state is built for it
    publish_trained(home, model, 8, TODAY - timedelta(days=27), TODAY)
    metadata = materialize([live_state], resources=resources).asset_materializations_for_node(LIVE_STATE)[0].metadata
    assert metadata["written"].value is False and "inside champion v8's training window" in metadata["reason"].value


def test_live_state_follows_each_intraday_refresh_and_each_new_champion():
    from factory_assets.ml.defs import definitions as mlops

    instance = DagsterInstance.ephemeral()
    key = AssetKey(LIVE_STATE)
    now = datetime(2024, 11, 12, 9, 0, tzinfo=timezone.utc)
    cursor = None

    def tick(minutes: float) -> bool:
        nonlocal cursor
        with freeze_time(now + timedelta(minutes=minutes)):
            result = evaluate_automation_conditions(defs=mlops.defs, instance=instance, cursor=cursor)
        cursor = result.cursor
        return bool(result.get_num_requested(key))

    graph = mlops.defs.resolve_asset_graph()
    assert graph.get(key).freshness_policy.fail_window.to_timedelta() == timedelta(hours=1)
    assert not tick(0)  # no intraday features yet
    instance.report_runless_asset_event(AssetMaterialization(asset_key="served_model", partition="2024-11-11"))
    assert not tick(1)  # a champion, but no intraday features: nothing to fold in
    instance.report_runless_asset_event(AssetMaterialization(asset_key="intraday_features"))
    assert tick(2)  # an intraday refresh
    instance.report_runless_asset_event(AssetMaterialization(asset_key=LIVE_STATE))
    assert not tick(3)  # handled
    instance.report_runless_asset_event(AssetMaterialization(asset_key="intraday_features"))
    assert tick(17)  # the next refresh
    instance.report_runless_asset_event(AssetMaterialization(asset_key=LIVE_STATE))
    assert not tick(18)
    instance.report_runless_asset_event(AssetMaterialization(asset_key="served_model", partition="2024-11-11"))
    assert tick(19)  # a new champion
