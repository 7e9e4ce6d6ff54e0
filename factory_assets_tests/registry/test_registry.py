"""Tests of factory_assets.ml.registry on a temporary SQLite file (its default store), and on PostgreSQL when
FACTORY_TEST_REGISTRY_URL names a scratch database (the store of a deployment)."""

from __future__ import annotations

import json
import os
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from factory_assets.ml import registry

DAY = date(2024, 11, 5)


@pytest.fixture
def clock(monkeypatch):
    """A registry clock that advances one second per reading (deterministic ordering of timestamps)."""
    state = {"t": datetime(2024, 11, 6, 12, 0, tzinfo=timezone.utc)}

    def now() -> datetime:
        state["t"] += timedelta(seconds=1)
        return state["t"]

    monkeypatch.setattr(registry, "_now", now)
    return state


POSTGRES_URL = os.environ.get("FACTORY_TEST_REGISTRY_URL")  # e.g. postgresql+psycopg2://postgres@127.0.0.1:5432/registry


@pytest.fixture(params=["sqlite", "postgresql"])
def con(request, tmp_path, clock):
    """A registry connection on its default store (SQLite) and, when ``FACTORY_TEST_REGISTRY_URL`` names a
    PostgreSQL database (emptied first: its registry tables are dropped), on that too."""
    if request.param == "sqlite":
        url = registry.default_url(tmp_path)
    else:
        if not POSTGRES_URL:
            pytest.skip("no PostgreSQL registry to test: set FACTORY_TEST_REGISTRY_URL (a scratch database)")
        url = POSTGRES_URL
        with registry.engine(url).connect() as scratch:
            registry.METADATA.drop_all(scratch)
    with registry.connect(url) as connection:
        registry.ensure_schema(connection)
        registry.ensure_schema(connection)  # idempotent
        yield connection


@pytest.fixture
def aliases(tmp_path) -> Path:
    path = tmp_path / "home" / "simulator" / "aliases"
    path.mkdir(parents=True)
    return path


def reg(con, n: int, day: date = DAY, status: str = "candidate", reason: str = "all gates passed") -> int:
    return registry.register(con, day, Path(f"/models/{n}.json"), f"sha-{n}", status, reason, {"ndcg_at_10": n / 10})


# --------------------------------------------------------------------------- register
def test_versions_are_monotonic_and_rows_complete(con):
    assert [reg(con, 1), reg(con, 2), reg(con, 3, status="rejected", reason="ndcg below popularity")] == [1, 2, 3]
    row = registry.version_row(con, 3)
    assert row["status"] == "rejected" and row["reason"] == "ndcg below popularity"
    assert row["manifest_sha256"] == "sha-3" and row["manifest_path"] == "/models/3.json"
    assert row["metrics"] == {"ndcg_at_10": 0.3}
    assert row["partition_day"] == "2024-11-05"
    assert registry.versions(con)["version"].tolist() == [1, 2, 3]


def test_reregistering_same_sha_returns_same_version(con):
    v1 = reg(con, 1, status="rejected", reason="gate failed")
    assert reg(con, 2) == 2
    again = reg(con, 1, status="candidate", reason="re-run passed")
    assert again == v1
    assert len(registry.versions(con)) == 2
    row = registry.version_row(con, v1)
    assert (row["status"], row["reason"]) == ("candidate", "re-run passed")
    last = registry.history(con).iloc[-1]
    assert (last["version"], last["action"], last["from_status"], last["to_status"]) == (1, "re-evaluated", "rejected", "candidate")


def test_reregistering_the_champion_keeps_it_champion(con, aliases):
    v = reg(con, 1)
    registry.promote(con, aliases, v, "first champion", {})
    n_events = len(registry.history(con))
    assert reg(con, 1, status="rejected", reason="re-run") == v
    assert registry.version_row(con, v)["status"] == "champion"
    assert len(registry.history(con)) == n_events + 1  # one "reproduced" event, the status kept
    last = registry.history(con).iloc[-1]
    assert (last["action"], last["from_status"], last["to_status"]) == (registry.REPRODUCED, "champion", "champion")


def test_register_refuses_other_statuses(con):
    with pytest.raises(ValueError, match="candidate"):
        reg(con, 1, status="champion")
    assert registry.versions(con).empty


# --------------------------------------------------------------------------- promote and aliases
def test_promote_retires_previous_champion_and_writes_alias(con, aliases):
    v1, v2 = reg(con, 1), reg(con, 2)
    assert registry.read_alias(aliases) is None

    p1 = registry.promote(con, aliases, v1, "first", {"window_version": "w1"})
    alias = registry.read_alias(aliases)
    assert alias == p1
    assert (alias["version"], alias["path"], alias["sha256"], alias["previous_version"]) == (1, "/models/1.json", "sha-1", None)
    assert alias["window_version"] == "w1" and alias["partition_day"] == "2024-11-05"

    p2 = registry.promote(con, aliases, v2, "beats champion", {})
    alias = json.loads((aliases / "champion.json").read_text())
    assert alias == p2
    assert (alias["version"], alias["path"], alias["sha256"], alias["previous_version"]) == (2, "/models/2.json", "sha-2", 1)
    assert alias["reason"] == "beats champion"

    statuses = dict(zip(registry.versions(con)["version"], registry.versions(con)["status"]))
    assert statuses == {1: "retired", 2: "champion"}
    assert registry.version_row(con, 1)["reason"] == "champion replaced by version 2"
    # the alias was replaced, no temporary file left behind
    assert sorted(p.name for p in aliases.iterdir()) == ["champion.json"]


def test_history_is_appended_in_order(con, aliases):
    v1 = reg(con, 1)
    v2 = reg(con, 2, status="rejected", reason="coverage gate")
    v3 = reg(con, 3)
    registry.promote(con, aliases, v1, "first", {})
    registry.promote(con, aliases, v3, "better", {})
    registry.set_status(con, v2, "candidate", "manual override", action="override")
    h = registry.history(con)
    got = list(zip(h["version"], h["action"], h["from_status"].where(h["from_status"].notna(), None), h["to_status"]))
    assert got == [
        (1, "registered", None, "candidate"),
        (2, "registered", None, "rejected"),
        (3, "registered", None, "candidate"),
        (1, "promoted", "candidate", "champion"),
        (1, "retired", "champion", "retired"),
        (3, "promoted", "candidate", "champion"),
        (2, "override", "rejected", "candidate"),
    ]
    assert h["changed_at"].is_monotonic_increasing
    assert h.iloc[-1]["reason"] == "manual override"


def test_promoting_the_champion_again_is_harmless(con, aliases):
    v = reg(con, 1)
    registry.promote(con, aliases, v, "first", {})
    pointer = registry.promote(con, aliases, v, "again", {})
    assert pointer["version"] == 1 and pointer["previous_version"] == 1
    assert registry.version_row(con, v)["status"] == "champion"
    assert registry.history(con)["action"].tolist() == ["registered", "promoted"]


def test_alias_survives_a_crash_during_replace(con, aliases, monkeypatch):
    v1, v2 = reg(con, 1), reg(con, 2)
    registry.promote(con, aliases, v1, "first", {})
    before = (aliases / "champion.json").read_bytes()

    def crash(src, dst):
        raise OSError("simulated crash during os.replace")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        registry.promote(con, aliases, v2, "second", {})
    monkeypatch.undo()

    # the old pointer is intact and readable, and the failed write left no temporary file
    assert (aliases / "champion.json").read_bytes() == before
    assert [p.name for p in aliases.iterdir()] == ["champion.json"]
    alias = registry.read_alias(aliases)
    assert alias["version"] == 1 and alias["sha256"] == "sha-1"
    # the registry rows were committed before the alias moved (documented); a re-run repairs the alias
    assert registry.version_row(con, v2)["status"] == "champion"
    repaired = registry.promote(con, aliases, v2, "second", {})
    assert registry.read_alias(aliases) == repaired and repaired["previous_version"] == 1
    assert [p.name for p in aliases.iterdir()] == ["champion.json"]


def test_failed_promotion_transaction_rolls_back(con, aliases, monkeypatch):
    v1, v2 = reg(con, 1), reg(con, 2)
    registry.promote(con, aliases, v1, "first", {})
    real = registry.set_status

    def fail_on_promote(c, version, status, reason, action):
        if action == "promoted":
            raise RuntimeError("boom")
        real(c, version, status, reason, action)

    monkeypatch.setattr(registry, "set_status", fail_on_promote)
    with pytest.raises(RuntimeError, match="boom"):
        registry.promote(con, aliases, v2, "second", {})
    # the retirement of v1 inside the transaction was rolled back; alias untouched
    assert registry.version_row(con, v1)["status"] == "champion"
    assert registry.version_row(con, v2)["status"] == "candidate"
    assert registry.read_alias(aliases)["version"] == 1


# --------------------------------------------------------------------------- lookups
def test_latest_for_day(con):
    assert registry.latest_for_day(con, DAY) is None
    v1 = reg(con, 1)
    v2 = reg(con, 2)
    v3 = reg(con, 3, day=DAY + timedelta(days=1))
    assert registry.latest_for_day(con, DAY)["version"] == v2
    assert registry.latest_for_day(con, DAY + timedelta(days=1))["version"] == v3
    # updating v1 makes it the most recently updated version of the day
    registry.set_status(con, v1, "rejected", "late gate failure", action="re-evaluated")
    latest = registry.latest_for_day(con, DAY)
    assert latest["version"] == v1 and latest["status"] == "rejected"
    assert registry.latest_for_day(con, DAY - timedelta(days=1)) is None


def test_unknown_version_and_status_errors(con, aliases):
    reg(con, 1)
    with pytest.raises(LookupError, match="99"):
        registry.version_row(con, 99)
    with pytest.raises(LookupError, match="99"):
        registry.set_status(con, 99, "retired", "x", action="retired")
    with pytest.raises(LookupError, match="99"):
        registry.promote(con, aliases, 99, "x", {})
    with pytest.raises(ValueError, match="unknown status"):
        registry.set_status(con, 1, "deleted", "x", action="x")
    assert registry.read_alias(aliases) is None
    assert registry.version_row(con, 1)["status"] == "candidate"


def test_registry_persists_across_connections(tmp_path, clock):
    url = registry.default_url(tmp_path / "p")
    with registry.connect(url) as c:
        registry.ensure_schema(c)
        reg(c, 1)
    registry._ENGINES.clear()  # a fresh engine: nothing cached in this process carries over
    with registry.connect(url) as c:
        registry.ensure_schema(c)
        assert reg(c, 2) == 2
        assert registry.versions(c)["manifest_sha256"].tolist() == ["sha-1", "sha-2"]


def test_a_home_deleted_and_made_again_under_the_same_path_gets_its_schema_again(tmp_path):
    # a long-lived process (a Celery worker) outlives the home it first wrote: its per-URL cache must not skip
    # the schema of the new file
    url = f"sqlite:///{tmp_path / 'home' / 'registry.db'}"
    with registry.connect(url) as con:
        registry.versions(con)
    import shutil

    shutil.rmtree(tmp_path / "home")
    (tmp_path / "home").mkdir()  # as the resource's layout.ensure() makes it again
    with registry.connect(url) as con:
        assert registry.versions(con).empty
