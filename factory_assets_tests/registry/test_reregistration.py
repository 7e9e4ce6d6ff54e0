"""Re-registering a manifest the registry already holds (a re-run of the same day): which statuses it may change.

The operator's defect: after a rollback, re-running the rolled-back day reproduced the identical manifest and
``register`` turned the retired version back into ``candidate`` (and ``served_model`` then promoted it again,
undoing the rollback).  See the transition table in :func:`factory_assets.ml.registry.register`.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from factory_assets.ml.recsys import artefact
from factory_assets.ml import registry
from factory_assets_tests import ml_helpers as ml
from factory_assets_tests.registry.test_models_cli import (  # noqa: F401  (registry_home is a fixture)
    ALWAYS_PROMOTE,
    PROMOTE_DAYS,
    aliases as home_aliases,
    copy_home,
    registry_home,
    warehouse,
)
from factory_assets_tests.registry.test_registry import aliases, clock, con, reg  # noqa: F401  (fixtures)

VERDICTS = registry.REEVALUABLE  # the gates' verdicts: candidate, shadow, rejected (and backtest where known)


def _events(con, version: int) -> list[tuple[str, str | None, str, str]]:
    frame = registry.history(con)
    frame = frame[frame["version"] == version]
    return [(r.action, r.from_status, r.to_status, r.reason) for r in frame.itertuples()]


@pytest.fixture
def verified(monkeypatch) -> list[str]:
    """rollback() verifies the target's artefact; these versions have none, so the check only records the call."""
    calls: list[str] = []
    monkeypatch.setattr(artefact, "load_manifest_model", lambda path, which, sha: calls.append(sha))
    return calls


def test_rerun_after_rollback_keeps_the_retired_version_retired(con, aliases, verified):
    v1 = reg(con, 1)
    registry.promote(con, aliases, v1, "first champion")
    v2 = reg(con, 2, day=date(2024, 11, 6))
    registry.promote(con, aliases, v2, "better")
    registry.rollback(con, aliases, "complaints", "alice")
    assert verified == ["sha-1"]
    assert registry.read_alias(aliases)["version"] == v1
    assert registry.version_row(con, v2)["status"] == "retired"
    before_row = registry.version_row(con, v2)
    stack = registry.champion_stack(con)
    n_events = len(registry.history(con))

    # the operator re-runs 2024-11-06: the same manifest again, its gates pass
    assert reg(con, 2, day=date(2024, 11, 6), status="candidate", reason="all gates passed (re-run)") == v2
    row = registry.version_row(con, v2)
    assert row["status"] == "retired"
    assert (row["reason"], row["updated_at"]) == (before_row["reason"], before_row["updated_at"])
    assert len(registry.versions(con)) == 2 and len(registry.history(con)) == n_events + 1
    action, from_status, to_status, reason = _events(con, v2)[-1]
    assert (action, from_status, to_status) == (registry.REPRODUCED, "retired", "retired")
    assert "verdict candidate: all gates passed (re-run)" in reason and "retired kept" in reason
    assert registry.champion_stack(con) == stack and registry.rollback_candidates(con, v1) == []
    assert registry.read_alias(aliases)["version"] == v1
    assert registry.latest_for_day(con, date(2024, 11, 6))["status"] == "retired"

    # a verdict of shadow does not bring it back through the shadow alias either
    assert reg(con, 2, day=date(2024, 11, 6), status="shadow", reason="not clearly better") == v2
    assert registry.designate_shadow(con, aliases, v2, "not clearly better") is None
    assert registry.read_alias(aliases, registry.SHADOW) is None
    assert registry.version_row(con, v2)["status"] == "retired"

    # and the champion it was rolled back to, re-run as well, stays champion (the first manifest again)
    assert reg(con, 1, status="rejected", reason="latency budget exceeded") == v1
    assert registry.version_row(con, v1)["status"] == "champion"
    assert _events(con, v1)[-1][:3] == (registry.REPRODUCED, "champion", "champion")
    assert "verdict rejected: latency budget exceeded" in _events(con, v1)[-1][3]
    assert registry.read_alias(aliases)["version"] == v1


@pytest.mark.parametrize("verdict", VERDICTS)
@pytest.mark.parametrize("start", VERDICTS)
def test_a_version_that_never_served_takes_the_new_verdict(con, aliases, start, verdict):
    v = reg(con, 1, status=start, reason="first run")
    assert reg(con, 1, status=verdict, reason="second run") == v
    row = registry.version_row(con, v)
    assert (row["status"], row["reason"]) == (verdict, "second run")
    assert _events(con, v)[-1] == ("re-evaluated", start, verdict, "second run")


@pytest.mark.parametrize("verdict", VERDICTS)
@pytest.mark.parametrize("start", ["champion", "retired", "erased"])
def test_champion_retired_and_erased_versions_keep_their_status(con, aliases, start, verdict):
    v = reg(con, 1)
    registry.promote(con, aliases, v, "champion")
    if start == "retired":
        registry.promote(con, aliases, reg(con, 2), "replaced")
    status = registry.version_row(con, v)["status"]
    if start == "erased":
        registry.record_event(con, v, registry.ERASED_DATA, "user erased")
    n_events = len(registry.history(con))
    assert reg(con, 1, status=verdict, reason="re-run") == v
    assert registry.version_row(con, v)["status"] == status == ("retired" if start == "retired" else "champion")
    assert len(registry.history(con)) == n_events + 1
    action, from_status, to_status, reason = _events(con, v)[-1]
    assert (action, from_status, to_status) == (registry.REPRODUCED, status, status)
    assert f"verdict {verdict}: re-run" in reason
    assert ("erased" in reason) == (start == "erased")


def test_an_erased_version_that_never_served_keeps_its_status(con):
    v = reg(con, 1, status="rejected", reason="gate failed")
    registry.record_event(con, v, registry.ERASED_DATA, "user erased")
    assert reg(con, 1, status="candidate", reason="re-run passed") == v
    assert registry.version_row(con, v)["status"] == "rejected"
    assert _events(con, v)[-1][0] == registry.REPRODUCED


def test_designate_shadow_still_moves_a_never_served_version(con, aliases):
    old = reg(con, 1, status="shadow")  # as candidate_model does: register, then designate
    registry.designate_shadow(con, aliases, old, "first shadow")
    new = reg(con, 2, status="shadow")
    pointer = registry.designate_shadow(con, aliases, new, "second shadow")
    assert pointer["version"] == new and registry.read_alias(aliases, registry.SHADOW)["version"] == new
    assert registry.version_row(con, old)["status"] == "retired"
    # the retired shadow re-run with a shadow verdict: the alias stays with the newer one
    assert reg(con, 1, status="shadow", reason="re-run") == old
    assert registry.designate_shadow(con, aliases, old, "re-run")["version"] == new
    assert registry.version_row(con, old)["status"] == "retired"


def test_rerunning_a_rolled_back_day_through_dagster_does_not_undo_the_rollback(registry_home, tmp_path):
    """The operator's sequence end to end: v3 rolled back to v2, then v3's day trained again (same manifest)."""
    home = copy_home(registry_home, tmp_path / "home")
    with ml.connect(home) as con:
        registry.rollback(con, home_aliases(home), "bad launch", "oncall")
        sha3 = registry.version_row(con, 3)["manifest_sha256"]
    assert registry.read_alias(home_aliases(home))["version"] == 2

    result = ml.train(home, PROMOTE_DAYS[2], **ALWAYS_PROMOTE)
    assert result.success
    [candidate] = [m for m in result.get_asset_materialization_events() if m.asset_key.to_user_string() == "candidate_model"]
    assert candidate.materialization.metadata["version"].value == 3  # the same manifest: the same version
    assert candidate.materialization.metadata["manifest_sha256"].value == sha3
    with ml.connect(home) as con:
        assert dict(con.exec_driver_sql("SELECT version, status FROM model_versions").fetchall()) == {
            1: "retired", 2: "champion", 3: "retired", 4: "rejected"
        }
        last = registry.history(con).iloc[-1]
    assert (last["version"], last["action"], last["to_status"]) == (3, registry.REPRODUCED, "retired")
    assert registry.read_alias(home_aliases(home))["version"] == 2  # served_model kept the restored champion
