"""Rollback: the CLI, the ``rollback_champion`` job, and ``champion_verified``'s automatic rollback."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pytest
from dagster import AssetSelection, materialize

from factory_assets.ml.defs.served import served_model
from factory_assets.ml.defs.champion_checks import (
    AUTO_ROLLBACK_ACTOR,
    CHAMPION_VERIFIED,
    auto_rollback,
    champion_verified,
    verify_champion,
)
from factory_assets.jobs import ROLLBACK_JOB, rollback_champion
from factory_assets.ml import registry
from factory_assets_tests.helpers import small_factory
from factory_assets_tests.registry.test_models_cli import (  # noqa: F401  (registry_home is a fixture)
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


def champion(home: Path) -> int:
    return registry.read_alias(aliases(home))["version"]


def events(home: Path) -> list[dict]:
    with duckdb.connect(str(warehouse(home)), read_only=True) as con:
        return registry.history(con).to_dict("records")


def statuses(home: Path) -> dict[int, str]:
    with duckdb.connect(str(warehouse(home)), read_only=True) as con:
        return dict(con.execute("SELECT version, status FROM model_versions").fetchall())


def flip_served_byte(home: Path, version: int) -> Path:
    """Corrupt one byte in the middle of a version's served ``.npz`` (as a disk fault or a tamperer would)."""
    with duckdb.connect(str(warehouse(home)), read_only=True) as con:
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
        resources={"factory": small_factory(home)}, raise_on_error=False,
    )
    assert result.success  # a failed non-blocking check does not fail the run
    [evaluation] = [e for e in result.get_asset_check_evaluations() if e.check_name == CHAMPION_VERIFIED]
    return evaluation


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
def test_rollback_job(home):
    factory = small_factory(home)
    result = rollback_champion.execute_in_process(
        run_config={"ops": {"rollback_op": {"config": {"reason": "bad launch", "actor": "oncall"}}}},
        resources={"factory": factory},
    )
    assert result.success and rollback_champion.name == ROLLBACK_JOB
    assert result.output_for_node("rollback_op")["to_version"] == 2 and champion(home) == 2
    last = events(home)[-1]
    assert last["action"] == "rolled_back" and "oncall" in last["reason"] and "bad launch" in last["reason"]
    [mat] = result.get_asset_materialization_events()
    assert mat.asset_key.to_user_string() == "served_model" and mat.partition == registry.read_alias(aliases(home))["partition_day"]

    refused = rollback_champion.execute_in_process(
        run_config={"ops": {"rollback_op": {"config": {"reason": "x", "to_version": 4}}}},
        resources={"factory": factory}, raise_on_error=False,
    )
    assert not refused.success and champion(home) == 2


# --------------------------------------------------------------------------- champion_verified
def test_a_tampered_champion_fails_the_check_and_is_rolled_back_automatically(home):
    assert verify_champion(small_factory(home).layout)[0] is True
    passed = run_check(home)
    assert passed.passed and passed.metadata["champion_version"].value == 3

    flip_served_byte(home, 3)
    ok, reason = verify_champion(small_factory(home).layout)
    assert not ok and "v3" in reason and "sha256" in reason

    evaluation = run_check(home)
    assert evaluation.passed is False
    assert evaluation.metadata["rolled_back_from"].value == 3 and evaluation.metadata["rolled_back_to"].value == 2
    assert evaluation.metadata["rolled_back"].value is True
    assert champion(home) == 2 and registry.read_alias(aliases(home))["actor"] == AUTO_ROLLBACK_ACTOR
    last = events(home)[-1]
    assert (last["version"], last["action"]) == (2, "rolled_back") and AUTO_ROLLBACK_ACTOR in last["reason"]
    assert "champion_verified failed" in last["reason"]
    assert verify_champion(small_factory(home).layout)[0] is True
    assert run_check(home).passed  # the restored champion verifies


def test_no_eligible_earlier_champion_fails_and_says_so(home):
    with duckdb.connect(str(warehouse(home))) as con:
        registry.rollback(con, aliases(home), "walk back", "test")
        registry.rollback(con, aliases(home), "walk back", "test")
    assert champion(home) == 1
    flip_served_byte(home, 1)
    before = (events(home), (aliases(home) / "champion.json").read_bytes())
    evaluation = run_check(home)
    assert evaluation.passed is False and evaluation.metadata["rolled_back"].value is False
    assert "no earlier eligible champion" in evaluation.description
    assert (events(home), (aliases(home) / "champion.json").read_bytes()) == before


def test_an_unparsable_alias_is_set_aside_and_the_previous_champion_restored(home):
    layout = small_factory(home).layout
    (aliases(home) / "champion.json").write_text('{"version": 3, "path": ')
    ok, reason = verify_champion(layout)
    assert not ok and "does not parse" in reason
    with duckdb.connect(str(warehouse(home))) as con:
        outcome = auto_rollback(con, layout, reason)
    assert (outcome["rolled_back_from"], outcome["rolled_back_to"]) == (3, 2)
    assert champion(home) == 2 and registry.read_alias(aliases(home))["previous_version"] == 3
    assert len(list(aliases(home).glob("champion.json.corrupt-*"))) == 1
    assert verify_champion(layout)[0] is True


def test_auto_rollback_skips_an_earlier_champion_that_fails_verification(home):
    flip_served_byte(home, 3)
    flip_served_byte(home, 2)
    evaluation = run_check(home)
    assert evaluation.passed is False and evaluation.metadata["rolled_back_to"].value == 1
    assert [s["version"] for s in evaluation.metadata["skipped"].value] == [2]


def test_no_champion_yet_passes(tmp_path):
    assert verify_champion(small_factory(tmp_path).layout) == (True, "no champion yet: nothing to verify")


# --------------------------------------------------------------------------- the champion stack
@pytest.fixture
def con(tmp_path, monkeypatch):
    clock = {"t": datetime(2024, 11, 6, tzinfo=timezone.utc)}

    def now():
        clock["t"] += timedelta(seconds=1)
        return clock["t"]

    monkeypatch.setattr(registry, "_now", now)
    connection = duckdb.connect(str(tmp_path / "w.duckdb"))
    registry.ensure_schema(connection)
    yield connection
    connection.close()


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
