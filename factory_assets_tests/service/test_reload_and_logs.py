"""Hot reload (under concurrent requests, refusing tampered artefacts), rollback, shadow logs, impressions."""

from __future__ import annotations

import json
import threading
import time
from datetime import date, datetime, timezone
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from factory_assets.ml import served_log as serving_log
from factory_assets.ml.recsys.artefact import read_manifest
from factory_assets.ml import registry
from factory_assets.data.sources.folder import FolderSource, clear_cache, landed_files
from factory_assets_tests.service.conftest import SOURCE, TOKEN, hand_model, publish

AUTH = {"Authorization": f"Bearer {TOKEN}"}
DAY = date(2024, 11, 5)
FIXED = datetime(2024, 11, 5, 12, 30, tzinfo=timezone.utc)


def expected_ids(model, user: str, k: int) -> list[str]:
    from factory_assets.serving.scorer import LoadedModel

    return LoadedModel(model, 1, "", "").recommend([user], k)[0].item_ids


def tamper(pointer: dict) -> None:
    manifest = read_manifest(pointer["path"])
    artefact = Path(pointer["path"]).parent / manifest["artefacts"]["served"]["file"]
    data = bytearray(artefact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artefact.write_bytes(bytes(data))


def test_watcher_swaps_under_concurrent_requests_without_errors(home, make_client):
    models = {1: hand_model(seed=1), 2: hand_model(seed=2)}
    publish(home, models[1], 1)
    client = make_client(watch=True, poll_interval_s=0.01)
    want = {v: {u: expected_ids(m, u, 5) for u in ("u1", "u2", "u3")} for v, m in models.items()}
    assert want[1] != want[2]
    failures, seen = [], set()
    stop = threading.Event()

    def hammer(user: str):
        while not stop.is_set():
            r = client.get(f"/recommendations/{user}", params={"k": 5})
            if r.status_code != 200:
                failures.append(r.text)
                continue
            body = r.json()
            seen.add(body["model_version"])
            if [x["item_id"] for x in body["items"]] != want[body["model_version"]][user]:
                failures.append(("mixed model", body))

    threads = [threading.Thread(target=hammer, args=(u,)) for u in ("u1", "u2", "u3")]
    for t in threads:
        t.start()
    try:
        for i in range(6):  # flip the champion back and forth, the watcher picks each change up
            version = 2 if i % 2 == 0 else 1
            publish(home, models[version], version)
            deadline = time.monotonic() + 5
            while client.get("/readyz").json()["champion"]["version"] != version:
                assert time.monotonic() < deadline, "the watcher did not swap the model"
                time.sleep(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures, failures[:3]
    assert seen == {1, 2}
    assert "factory_serve_reloads_total 7" in client.get("/metrics").text


def test_tampered_artefact_is_refused_and_the_old_model_keeps_serving(home, make_client):
    publish(home, hand_model(seed=1), 1)
    client = make_client()
    pointer = publish(home, hand_model(seed=2), 2)
    tamper(pointer)
    r = client.post("/admin/reload", headers=AUTH)
    assert r.status_code == 409 and "failed verification" in r.json()["reload"]["champion"]["error"]
    assert client.get("/recommendations/u1").json()["model_version"] == 1
    ready = client.get("/readyz").json()
    assert ready["champion"]["version"] == 1 and "failed verification" in ready["last_error"]["champion"]
    assert "factory_serve_reload_failures_total 1" in client.get("/metrics").text


@pytest.mark.parametrize("damage", ["garbage_alias", "wrong_manifest_sha", "missing_manifest"])
def test_unverifiable_alias_is_refused(home, make_client, damage):
    publish(home, hand_model(seed=1), 1)
    client = make_client()
    alias = home / SOURCE / "aliases" / "champion.json"
    pointer = publish(home, hand_model(seed=2), 2)
    if damage == "garbage_alias":
        alias.write_text("{not json")
    elif damage == "wrong_manifest_sha":
        alias.write_text(json.dumps({**pointer, "sha256": "0" * 64}))
    else:
        Path(pointer["path"]).unlink()
    assert client.post("/admin/reload", headers=AUTH).status_code == 409
    assert client.get("/recommendations/u1").json()["model_version"] == 1


def test_refused_at_start_means_not_ready(home, make_client):
    tamper(publish(home, hand_model(), 1))
    client = make_client()
    assert client.get("/readyz").status_code == 503
    assert client.get("/recommendations/u1").status_code == 503


def test_shadow_lists_are_logged_for_the_same_requests(home, make_client):
    publish(home, hand_model(seed=1), 1)
    publish(home, hand_model(seed=2), 2, alias="shadow")
    client = make_client(clock=lambda: FIXED)
    assert client.get("/readyz").json()["shadow"]["version"] == 2
    for user in ("u0", "u1", "stranger"):
        body = client.get(f"/recommendations/{user}", params={"k": 4}).json()
        assert body["model_version"] == 1  # the shadow is never shown
    client.post("/recommendations", json={"user_ids": ["u2", "u3"], "k": 3})
    client.app.state.service.writer.flush()
    frame = serving_log.read_log(serving_log.log_directory(home / SOURCE), DAY)
    assert len(frame.attrs["problems"]) == 0
    lists = frame.groupby(["request_id", "role"]).agg(version=("model_version", "first"), n=("position", "size"),
                                                     top=("position", "min"), user=("user_id", "first"))
    roles = lists.reset_index().groupby("request_id")["role"].apply(set)
    assert len(roles) == 5 and all(r == {"champion", "shadow"} for r in roles)
    assert set(lists.xs("champion", level="role")["version"]) == {1}
    assert set(lists.xs("shadow", level="role")["version"]) == {2}
    assert (lists["top"] == 1).all() and set(lists["n"]) == {3, 4}
    assert set(frame["user_id"]) == {"u0", "u1", "stranger", "u2", "u3"}
    champion_u1 = frame[(frame.user_id == "u1") & (frame.role == "champion")].sort_values("position")
    assert champion_u1["item_id"].tolist() == expected_ids(hand_model(seed=1), "u1", 4)
    shadow_u1 = frame[(frame.user_id == "u1") & (frame.role == "shadow")].sort_values("position")
    assert shadow_u1["item_id"].tolist() == expected_ids(hand_model(seed=2), "u1", 4)
    assert "factory_serve_shadow_scored_total 5" in client.get("/metrics").text


def test_served_log_is_flushed_on_shutdown_in_batches(home, make_client):
    publish(home, hand_model(), 1)
    client = make_client(clock=lambda: FIXED, flush_rows=10)
    served = serving_log.log_directory(home / SOURCE)
    for i in range(3):  # 15 rows >= flush_rows: written by the log thread at its next wake-up
        client.get(f"/recommendations/u{i}", params={"k": 5})
    deadline = time.monotonic() + 10
    while not list(served.glob("served_*.parquet")):
        assert time.monotonic() < deadline, "the log thread did not write a full batch"
        time.sleep(0.01)
    for i in range(3, 5):  # 10 more rows: may be written at the next wake-up or at shutdown
        client.get(f"/recommendations/u{i}", params={"k": 5})
    client.get("/recommendations/u5", params={"k": 5})
    client.__exit__(None, None, None)  # lifespan shutdown flushes what is left
    files = sorted(served.glob("served_*.parquet"))
    assert len(files) >= 2  # batches of >= 10 rows, the rest at shutdown
    assert len(serving_log.read_log(served, DAY)) == 30


@pytest.mark.parametrize("log_process", [False, True], ids=["in-thread", "child-process"])
def test_impressions_land_atomically_and_the_folder_source_reads_them(home, make_client, tmp_path, log_process):
    landing = tmp_path / "landing"
    publish(home, hand_model(), 1)
    client = make_client(clock=lambda: FIXED, landing_dir=landing, log_process=log_process)
    shown = {}
    for user in ("u0", "u1", "new"):
        body = client.get(f"/recommendations/{user}", params={"k": 3}).json()
        shown[user] = [x["item_id"] for x in body["items"]]
    client.app.state.service.writer.flush()
    assert not [p for p in landing.iterdir() if p.name.endswith((".part", ".tmp"))]
    assert len(landed_files(landing)) == 1
    clear_cache()
    batch = FolderSource(landing, clock=lambda: datetime(2024, 11, 6, tzinfo=timezone.utc)).fetch_day(DAY)
    events = batch.events
    assert len(batch.quarantined) == 0 and len(batch.undated) == 0
    assert len(events) == 9
    assert set(events["event_type"]) == {"view"}
    assert events["event_id"].str.startswith("imp-").all() and events["event_id"].is_unique
    for user, ids in shown.items():
        assert set(events.loc[events.user_id == user, "item_id"]) == set(ids)
    assert (events["ts"] == pd.Timestamp(FIXED)).all()
    assert len(serving_log.read_log(serving_log.log_directory(home / SOURCE), DAY)) == 9
    assert "factory_serve_served_log_rows_total 9" in client.get("/metrics").text


def test_impressions_are_ingested_by_raw_events(home, make_client, tmp_path):
    from factory_assets.resources import Factory
    from factory_assets_tests.helpers import run

    landing = tmp_path / "landing"
    publish(home, hand_model(), 1)
    client = make_client(clock=lambda: FIXED, landing_dir=landing)
    client.post("/recommendations", json={"user_ids": ["u0", "u1"], "k": 4})
    client.app.state.service.writer.flush()
    factory_home = tmp_path / "factory"
    factory = Factory(home=str(factory_home), source="folder", source_path=str(landing))
    result = run(factory, DAY, ["raw_events"])
    assert result.success
    with duckdb.connect(str(factory.layout.warehouse), read_only=True) as con:
        rows = con.execute("SELECT event_id, user_id, event_type FROM raw_events").fetchall()
    assert len(rows) == 8 and {r[2] for r in rows} == {"view"} and all(r[0].startswith("imp-") for r in rows)


def test_admin_rollback_moves_the_alias_and_reloads(home, make_client):
    from factory_assets.platform.settings import HomeLayout

    layout = HomeLayout(home, SOURCE).ensure()
    pointers = [publish(home, hand_model(seed=s), s) for s in (1, 2)]
    with registry.connect(registry.default_url(layout.root)) as reg:
        for p in pointers:
            version = registry.register(reg, DAY, Path(p["path"]), p["sha256"], "candidate", "test", {})
            registry.promote(reg, layout.aliases, version, "test")
    client = make_client()
    assert client.get("/recommendations/u1").json()["model_version"] == 2
    r = client.post("/admin/rollback", json={"reason": "bad clicks"}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["to_version"] == 1 and r.json()["reload"]["champion"]["version"] == 1
    assert client.get("/recommendations/u1").json()["model_version"] == 1
    again = client.post("/admin/rollback", json={"reason": "again"}, headers=AUTH)
    assert again.status_code == 409 and "rollback refused" in again.json()["detail"]
    assert client.post("/admin/rollback", json={"reason": ""}, headers=AUTH).status_code == 422


def test_rollback_without_a_warehouse_is_refused(home, make_client):
    publish(home, hand_model(), 1)
    r = make_client().post("/admin/rollback", json={"reason": "x"}, headers=AUTH)
    assert r.status_code == 409 and r.json()["error"]


def wait_for(predicate, what: str, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, what
        time.sleep(0.01)
    return value


def test_deleted_champion_alias_is_reported_once_and_the_last_model_keeps_serving(home, make_client, caplog):
    import logging

    pointer = publish(home, hand_model(seed=1), 1)
    alias = home / SOURCE / "aliases" / "champion.json"
    client = make_client(watch=True, poll_interval_s=0.01)
    assert 'factory_serve_alias_missing{role="champion"} 0' in client.get("/metrics").text
    with caplog.at_level(logging.INFO, logger="factory.serve"):
        alias.unlink()
        message = (f"champion alias {alias} is gone; still serving the last loaded model "
                   f"v1 ({pointer['sha256'][:12]})")
        ready = wait_for(lambda: (b := client.get("/readyz").json())["last_error"]["champion"] and b, "no last_error")
        assert ready["last_error"] == {"champion": message, "shadow": None}
        assert ready["ready"] is True and ready["champion"]["version"] == 1
        time.sleep(0.2)  # ~20 more polls of the missing file
        r = client.post("/admin/reload", headers=AUTH)  # and a forced check
        assert r.status_code == 409
        assert r.json()["reload"]["champion"] == {"changed": False, "version": 1, "error": message}
        assert client.get("/recommendations/u1").json()["model_version"] == 1
        text = client.get("/metrics").text
        assert 'factory_serve_alias_missing{role="champion"} 1' in text
        assert "factory_serve_reload_failures_total 0" in text
        warnings = [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING]
        assert warnings == [("WARNING", message)]
        publish(home, hand_model(seed=1), 1)  # the same pointer comes back
        wait_for(lambda: client.get("/readyz").json()["last_error"]["champion"] is None, "last_error not cleared")
    assert 'factory_serve_alias_missing{role="champion"} 0' in client.get("/metrics").text
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert f"champion alias {alias} is back" in infos
    assert "factory_serve_reloads_total 1" in client.get("/metrics").text  # the start only: v1 was never reloaded


def test_champion_alias_missing_at_start_is_reported(home, make_client, caplog):
    import logging

    alias = home / SOURCE / "aliases" / "champion.json"
    with caplog.at_level(logging.INFO, logger="factory.serve"):
        client = make_client()
        client.post("/admin/reload", headers=AUTH)
    message = f"champion alias {alias} does not exist; nothing is served (503) until a champion is promoted"
    assert client.get("/readyz").json()["last_error"] == {"champion": message, "shadow": None}
    assert [(r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING] == [("WARNING", message)]
    assert 'factory_serve_alias_missing{role="champion"} 1' in client.get("/metrics").text


@pytest.fixture
def load_calls(monkeypatch):
    """Count :func:`load_alias` calls made by the service and :meth:`RankedLists.build` calls (precomputes)."""
    from factory_assets.serving import watcher as watcher_module
    from factory_assets.serving.scorer import RankedLists

    calls = {"load_alias": 0, "precompute": 0}
    load_alias, build = watcher_module.load_alias, RankedLists.build.__func__

    def counting_load_alias(*args, **kwargs):
        calls["load_alias"] += 1
        return load_alias(*args, **kwargs)

    def counting_build(cls, *args, **kwargs):
        calls["precompute"] += 1
        return build(cls, *args, **kwargs)

    monkeypatch.setattr(watcher_module, "load_alias", counting_load_alias)
    monkeypatch.setattr(RankedLists, "build", classmethod(counting_build))
    return calls


def test_reload_without_a_change_does_not_load_or_precompute(home, make_client, load_calls):
    from factory_assets_tests.service.conftest import hand_ranker_model

    champion = publish(home, hand_ranker_model(seed=1, n_users=20, n_items=30), 1)
    shadow = publish(home, hand_ranker_model(seed=2, n_users=20, n_items=30), 2, alias="shadow")
    client = make_client()
    assert load_calls == {"load_alias": 2, "precompute": 2}  # the start: both roles loaded and precomputed
    started = time.perf_counter()
    r = client.post("/admin/reload", headers=AUTH)
    elapsed = time.perf_counter() - started
    assert r.status_code == 200
    assert r.json() == {"reload": {
        "champion": {"changed": False, "version": 1,
                     "detail": f"the alias still names manifest {champion['sha256'][:12]} (artefact verified): nothing reloaded"},
        "shadow": {"changed": False, "version": 2,
                   "detail": f"the alias still names manifest {shadow['sha256'][:12]} (artefact verified): nothing reloaded"},
    }}
    assert load_calls == {"load_alias": 2, "precompute": 2}
    assert elapsed < 2.0  # milliseconds in practice; the precompute of two rankers is what took seconds
    # the watcher's path: the alias file rewritten with the same pointer (new mtime) is not a change either
    publish(home, hand_ranker_model(seed=1, n_users=20, n_items=30), 1)
    assert client.app.state.service.watcher.check()[registry.CHAMPION]["changed"] is False
    assert load_calls == {"load_alias": 2, "precompute": 2}
    # a changed pointer loads and precomputes again
    publish(home, hand_ranker_model(seed=3, n_users=20, n_items=30), 3)
    r = client.post("/admin/reload", headers=AUTH)
    assert r.status_code == 200
    assert r.json()["reload"]["champion"] == {"changed": True, "version": 3, "previous_version": 1}
    assert r.json()["reload"]["shadow"]["changed"] is False
    assert load_calls == {"load_alias": 3, "precompute": 3}
    assert client.get("/recommendations/u1").json()["model_version"] == 3
    text = client.get("/metrics").text
    assert "factory_serve_reloads_total 3" in text and "factory_serve_reload_failures_total 0" in text


def test_reload_of_an_unchanged_alias_still_verifies_the_artefact(home, make_client, load_calls):
    pointer = publish(home, hand_model(seed=1), 1)
    client = make_client()
    tamper(pointer)  # the artefact of the loaded model changes on disk, the alias does not
    r = client.post("/admin/reload", headers=AUTH)
    assert r.status_code == 409
    error = r.json()["reload"]["champion"]["error"]
    assert error.startswith(f"champion v1 ({pointer['path']}) failed verification: ")
    assert error.endswith("; v1 keeps serving (verified when it was loaded)")
    assert load_calls["load_alias"] == 1  # the start only: the check read no model
    assert client.get("/recommendations/u1").json()["model_version"] == 1
    assert client.get("/readyz").json()["last_error"]["champion"] == error
    assert "factory_serve_reload_failures_total 1" in client.get("/metrics").text
