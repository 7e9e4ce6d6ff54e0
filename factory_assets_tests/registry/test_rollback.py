"""Rollback: the CLI, the ``rollback_champion`` job, ``champion_verified`` (observes) and ``champion_guard``."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from dagster import AssetKey, AssetSelection, DagsterInstance, Definitions, SkipReason, build_sensor_context, materialize

from factory_assets.ml.defs.served import served_model
from factory_assets.ml.defs.champion_checks import (
    AUTO_ROLLBACK_ACTOR,
    CHAMPION_VERIFIED,
    auto_rollback,
    champion_verified,
    verify_champion,
)
from factory_assets.ml.defs.jobs import ROLLBACK_JOB, rollback_champion
from factory_assets.ml.defs.sensors import champion_guard
from factory_assets.ml import registry
from factory_assets.ml.resources import ArtefactStore
from factory_assets_tests import ml_helpers as ml
from factory_assets_tests.registry.test_models_cli import (  # noqa: F401  (registry_home is a fixture)
    PROMOTE_DAYS,
    aliases,
    copy_home,
    models,
    registry_home,
    warehouse,
)


@pytest.fixture
def home(registry_home, tmp_path) -> Path:
    """A private copy of the registry home: v1 -> v2 -> v3 champion, v4 rejected."""
    return copy_home(registry_home, tmp_path / "home")


def layout(home: Path):
    return ArtefactStore(home=str(home), source="simulator").layout


def champion(home: Path) -> int:
    return registry.read_alias(aliases(home))["version"]


def events(home: Path) -> list[dict]:
    with ml.connect(home) as con:
        return registry.history(con).to_dict("records")


def statuses(home: Path) -> dict[int, str]:
    with ml.connect(home) as con:
        return dict(con.exec_driver_sql("SELECT version, status FROM model_versions").fetchall())


def flip_served_byte(home: Path, version: int) -> Path:
    """Corrupt one byte in the middle of a version's served ``.npz`` (as a disk fault or a tamperer would)."""
    with ml.connect(home) as con:
        manifest_path = Path(registry.version_row(con, version)["manifest_path"])
    path = manifest_path.parent / json.loads(manifest_path.read_text())["artefacts"]["served"]["file"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def run_check(home: Path):
    """Execute only ``champion_verified`` through Dagster (the check is not partitioned)."""
    result = materialize(
        [served_model, champion_verified], selection=AssetSelection.checks(champion_verified),
        resources=ml.resources(home), raise_on_error=False,
    )
    assert result.success  # a failed non-blocking check does not fail the run
    [evaluation] = [e for e in result.get_asset_check_evaluations() if e.check_name == CHAMPION_VERIFIED]
    return evaluation


def rollback_job(home: Path):
    return Definitions(assets=[served_model], jobs=[rollback_champion], resources=ml.resources(home)).resolve_job_def(ROLLBACK_JOB)


def guard(home: Path, instance: DagsterInstance):
    """One tick of ``champion_guard``; a run request is executed as the daemon would (the rollback job)."""
    tick = champion_guard(build_sensor_context(instance=instance, resources=ml.resources(home)))
    if isinstance(tick, SkipReason):
        return tick, None
    result = rollback_job(home).execute_in_process(
        run_config=tick.run_config, partition_key=tick.partition_key, instance=instance, tags=tick.tags,
        raise_on_error=False)
    return tick, result


# --------------------------------------------------------------------------- the CLI
def test_rollback_restores_the_previous_champion_and_a_second_goes_further_back(home, capsys, monkeypatch):
    status, doc = models(capsys, home, "rollback", "--reason", "complaints about stale recommendations", "--actor", "alice")
    assert status == 0
    assert (doc["from_version"], doc["to_version"], doc["actor"]) == (3, 2, "alice")
    assert champion(home) == 2 and statuses(home) == {1: "retired", 2: "champion", 3: "retired", 4: "rejected"}
    pointer = registry.read_alias(aliases(home))
    assert (pointer["actor"], pointer["previous_version"]) == ("alice", 3) and pointer == doc["champion"]
    last = events(home)[-1]
    assert (last["version"], last["action"], last["from_status"], last["to_status"]) == (2, "rolled_back", "retired", "champion")
    assert "alice" in last["reason"] and "complaints about stale recommendations" in last["reason"] and "v3" in last["reason"]

    monkeypatch.setenv("USER", "bob")  # the default actor
    status, doc = models(capsys, home, "rollback", "--reason", "still bad")
    assert status == 0 and (doc["from_version"], doc["to_version"], doc["actor"]) == (2, 1, "bob")  # not back to v3
    assert champion(home) == 1
    assert [(e["version"], e["action"]) for e in events(home) if e["action"] == "rolled_back"] == [(2, "rolled_back"), (1, "rolled_back")]

    before = (events(home), (aliases(home) / "champion.json").read_bytes())
    status, doc = models(capsys, home, "rollback", "--reason", "once more")
    assert status == 1 and "no earlier eligible champion" in doc["error"]["message"]
    assert (events(home), (aliases(home) / "champion.json").read_bytes()) == before


def test_rollback_to_a_rejected_version_is_refused_and_nothing_changes(home, capsys):
    before = (events(home), statuses(home), (aliases(home) / "champion.json").read_bytes())
    status, doc = models(capsys, home, "rollback", "--to", "4", "--reason", "try the newest")
    assert status == 1
    assert doc["error"]["kind"] == "refused"
    assert "version 4 cannot serve: rejected" in doc["error"]["message"]
    assert (events(home), statuses(home), (aliases(home) / "champion.json").read_bytes()) == before
    status, doc = models(capsys, home, "rollback", "--to", "3", "--reason", "no-op")
    assert status == 1 and "already the champion" in doc["error"]["message"]
    status, doc = models(capsys, home, "rollback", "--to", "1", "--reason", "skip v2")  # --to any servable version
    assert status == 0 and (doc["from_version"], doc["to_version"]) == (3, 1)


def test_rollback_refuses_a_target_whose_artefact_fails_verification(home, capsys):
    flip_served_byte(home, 2)
    status, doc = models(capsys, home, "rollback", "--reason", "regression")
    assert status == 1 and "failed verification" in doc["error"]["message"] and "sha256" in doc["error"]["message"]
    assert champion(home) == 3


# --------------------------------------------------------------------------- the job
def test_rollback_job_materialises_served_model_on_the_restored_versions_day(home):
    config = {"ops": {"served_model": {"config": {"reason": "bad launch", "actor": "oncall"}}}}
    wrong = rollback_job(home).execute_in_process(run_config=config, partition_key=PROMOTE_DAYS[2].isoformat(),
                                                  raise_on_error=False)
    assert not wrong.success and champion(home) == 3  # v2 was trained for PROMOTE_DAYS[1]: refused, named
    [failure] = [e for e in wrong.all_events if e.is_step_failure]
    assert f"launch served_model with partition {PROMOTE_DAYS[1].isoformat()}" in failure.event_specific_data.error.message

    result = rollback_job(home).execute_in_process(run_config=config, partition_key=PROMOTE_DAYS[1].isoformat())
    assert result.success and champion(home) == 2
    last = events(home)[-1]
    assert last["action"] == "rolled_back" and "oncall" in last["reason"] and "bad launch" in last["reason"]
    [mat] = result.get_asset_materialization_events()
    assert mat.asset_key.to_user_string() == "served_model" and mat.partition == PROMOTE_DAYS[1].isoformat()
    assert mat.materialization.metadata["version"].value == 2 and mat.materialization.metadata["action"].value == "rollback"

    refused = rollback_job(home).execute_in_process(
        run_config={"ops": {"served_model": {"config": {"reason": "x", "version": 4}}}},
        partition_key=PROMOTE_DAYS[0].isoformat(), raise_on_error=False,
    )
    assert not refused.success and champion(home) == 2


# --------------------------------------------------------------------------- champion_verified + champion_guard
def test_a_tampered_champion_fails_the_check_and_the_guard_rolls_back(home):
    instance = DagsterInstance.ephemeral()
    assert verify_champion(layout(home))[0] is True
    passed = run_check(home)
    assert passed.passed and passed.metadata["champion_version"].value == 3
    assert isinstance(guard(home, instance)[0], SkipReason)

    flip_served_byte(home, 3)
    ok, reason = verify_champion(layout(home))
    assert not ok and "v3" in reason and "sha256" in reason

    evaluation = run_check(home)  # observes only: nothing moves
    assert evaluation.passed is False and evaluation.metadata["rollback_target"].value == 2
    assert champion(home) == 3

    tick, result = guard(home, instance)
    assert tick.partition_key == PROMOTE_DAYS[1].isoformat() and result.success
    assert champion(home) == 2 and registry.read_alias(aliases(home))["actor"] == AUTO_ROLLBACK_ACTOR
    last = events(home)[-1]
    assert (last["version"], last["action"]) == (2, "rolled_back") and AUTO_ROLLBACK_ACTOR in last["reason"]
    assert "champion_verified failed" in last["reason"]
    latest = instance.get_latest_materialization_event(AssetKey("served_model"))
    assert latest.asset_materialization.metadata["version"].value == 2
    assert verify_champion(layout(home))[0] is True
    assert run_check(home).passed  # the restored champion verifies


def test_no_eligible_earlier_champion_fails_and_says_so(home):
    with ml.connect(home) as con:
        registry.rollback(con, aliases(home), "walk back", "test")
        registry.rollback(con, aliases(home), "walk back", "test")
    assert champion(home) == 1
    flip_served_byte(home, 1)
    before = (events(home), (aliases(home) / "champion.json").read_bytes())
    evaluation = run_check(home)
    assert evaluation.passed is False and evaluation.metadata["rollback_target"].value is None
    assert "no earlier eligible champion" in evaluation.description
    tick, _ = guard(home, DagsterInstance.ephemeral())
    assert isinstance(tick, SkipReason) and "no earlier eligible champion" in tick.skip_message
    assert (events(home), (aliases(home) / "champion.json").read_bytes()) == before


def test_an_unparsable_alias_is_set_aside_and_the_previous_champion_restored(home):
    lay = layout(home)
    (aliases(home) / "champion.json").write_text('{"version": 3, "path": ')
    ok, reason = verify_champion(lay)
    assert not ok and "does not parse" in reason
    with ml.connect(home) as con:
        outcome = auto_rollback(con, lay, reason)
    assert (outcome["rolled_back_from"], outcome["rolled_back_to"]) == (3, 2)
    assert champion(home) == 2 and registry.read_alias(aliases(home))["previous_version"] == 3
    assert len(list(aliases(home).glob("champion.json.corrupt-*"))) == 1
    assert verify_champion(lay)[0] is True


def test_the_guard_also_repairs_an_unparsable_alias_through_a_run(home):
    (aliases(home) / "champion.json").write_text("not json")
    tick, result = guard(home, DagsterInstance.ephemeral())
    assert result.success and champion(home) == 2
    assert len(list(aliases(home).glob("champion.json.corrupt-*"))) == 1


def test_auto_rollback_skips_an_earlier_champion_that_fails_verification(home):
    flip_served_byte(home, 3)
    flip_served_byte(home, 2)
    evaluation = run_check(home)
    assert evaluation.passed is False and evaluation.metadata["rollback_target"].value == 1
    assert [s["version"] for s in evaluation.metadata["skipped"].value] == [2]
    tick, result = guard(home, DagsterInstance.ephemeral())
    assert tick.partition_key == PROMOTE_DAYS[0].isoformat() and result.success and champion(home) == 1


def test_no_champion_yet_passes(tmp_path):
    assert verify_champion(layout(tmp_path)) == (True, "no champion yet: nothing to verify")


# --------------------------------------------------------------------------- the champion stack
@pytest.fixture
def con(tmp_path, monkeypatch):
    clock = {"t": datetime(2024, 11, 6, tzinfo=timezone.utc)}

    def now():
        clock["t"] += timedelta(seconds=1)
        return clock["t"]

    monkeypatch.setattr(registry, "_now", now)
    with registry.connect(registry.default_url(tmp_path)) as connection:
        yield connection


def test_champion_stack_pops_on_rollback_and_skips_ineligible(con, tmp_path):
    folder = tmp_path / "aliases"
    for n in range(1, 6):
        registry.register(con, date(2024, 11, n), Path(f"/m/{n}.json"), f"sha-{n}", "candidate", "ok", {})
    for n in (1, 2, 3):
        registry.promote(con, folder, n, "better")
    assert registry.champion_stack(con) == [1, 2, 3] and registry.rollback_candidates(con, 3) == [2, 1]
    registry.promote(con, folder, 2, "rolled back by hand", action="rolled_back")  # as registry.rollback records it
    assert registry.champion_stack(con) == [1, 2] and registry.rollback_candidates(con, 2) == [1]
    registry.promote(con, folder, 4, "better")
    registry.promote(con, folder, 5, "better")
    registry.record_event(con, 4, registry.ERASED_DATA, "erasure")
    assert registry.champion_stack(con) == [1, 2, 4, 5] and registry.rollback_candidates(con, 5) == [2, 1]
    registry.promote(con, folder, 1, "jump", action="rolled_back")
    assert registry.champion_stack(con) == [1] and registry.rollback_candidates(con, 1) == []
