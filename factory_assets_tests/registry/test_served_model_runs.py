"""Every move of the champion is a ``served_model`` run: the catalog's latest materialization is what is served.

Also: ``factory models rollback`` never waits for the warehouse's DuckDB lock (the registry is its own store),
and the SQLite registry takes writers from two processes.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from datetime import date, timedelta
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, Definitions, build_sensor_context

from factory_assets import cli
from factory_assets.ml import registry
from factory_assets.ml.defs.jobs import ROLLBACK_JOB, rollback_champion
from factory_assets.ml.defs.sensors import champion_guard
from factory_assets.ml.defs.served import served_model
from factory_assets.ml.models_cli import rollback_champion as cli_rollback
from factory_assets.ml.resources import ArtefactStore
from factory_assets_tests import ml_helpers as ml
from factory_assets_tests.registry.test_models_cli import (  # noqa: F401  (registry_home is a fixture)
    ALWAYS_PROMOTE,
    FIRST_DAY,
    _hold_lock,
    aliases,
    copy_home,
    models,
    registry_home,
    warehouse,
)
from factory_assets_tests.registry.test_rollback import flip_served_byte

NEW_DAY = FIRST_DAY + timedelta(days=31)  # 2024-11-01: after v4's rejected day; trained into v5


@pytest.fixture
def home(registry_home, tmp_path, monkeypatch) -> Path:
    """A private copy of the registry home (v1 -> v2 -> v3 champion, v4 rejected), its Dagster instance under
    ``<home>/dagster`` (no ``DAGSTER_HOME`` from the environment)."""
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    return copy_home(registry_home, tmp_path / "home")


def served_in_catalog(home: Path) -> tuple[int, str]:
    """(metadata ``version``, partition) of the latest ``served_model`` materialization of the home's instance."""
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        event = instance.get_latest_materialization_event(AssetKey("served_model"))
    return event.asset_materialization.metadata["version"].value, event.asset_materialization.partition


def alias_version(home: Path) -> int:
    return registry.read_alias(aliases(home))["version"]


def test_promotion_rollback_and_auto_rollback_all_leave_the_served_version_in_the_catalog(home):
    from factory_assets.platform import settings

    settings.dagster_home(home)  # <home>/dagster with the project's dagster.yaml (sets DAGSTER_HOME: monkeypatched)
    # 1. a promotion: a new day's candidate passes its gates (champion gate relaxed) and becomes v5
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        assert ml.train(home, NEW_DAY, instance, **ALWAYS_PROMOTE).success
    # by hand: v1..v3 promoted in turn, v4 rejected, so the new candidate is v5 and replaces v3
    assert alias_version(home) == 5 and served_in_catalog(home) == (5, NEW_DAY.isoformat())

    # 2. a rollback from the CLI function (what `factory models rollback` and the service call)
    doc = cli_rollback(ArtefactStore(home=str(home), source="simulator").layout, "regression", "alice")
    # champion stack [1, 2, 3, 5]: the previous champion is v3, trained for FIRST_DAY + 29
    assert (doc["from_version"], doc["to_version"]) == (5, 3)
    assert alias_version(home) == 3
    assert served_in_catalog(home) == (3, (FIRST_DAY + timedelta(days=29)).isoformat())

    # 3. an automatic rollback: v3's artefact is corrupted, the guard's run request is executed
    flip_served_byte(home, 3)
    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        request = champion_guard(build_sensor_context(instance=instance, resources=ml.resources(home)))
        job = Definitions(assets=[served_model], jobs=[rollback_champion], resources=ml.resources(home)).resolve_job_def(ROLLBACK_JOB)
        assert job.execute_in_process(run_config=request.run_config, partition_key=request.partition_key,
                                      instance=instance, tags=request.tags).success
    # after the rollback to v3 the stack is [1, 2, 3] (v5 popped): the next eligible champion is v2 (FIRST_DAY + 28)
    assert alias_version(home) == 2
    assert served_in_catalog(home) == (2, (FIRST_DAY + timedelta(days=28)).isoformat())
    assert registry.read_alias(aliases(home))["actor"] == "auto-rollback"


HOLD_LOCK = textwrap.dedent(
    """
    import sys, time, duckdb
    con = duckdb.connect(sys.argv[1])  # read-write: DuckDB then lets no other process open the file
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    con.close()
    """
)


def test_factory_models_rollback_finishes_in_seconds_while_the_warehouse_is_locked(home, capsys):
    proc = _hold_lock(warehouse(home), 120)
    try:
        started = time.monotonic()
        status, doc = models(capsys, home, "rollback", "--reason", "bad launch", "--actor", "oncall")
        elapsed = time.monotonic() - started
        assert proc.poll() is None  # the lock was held the whole time
    finally:
        proc.kill()
        proc.wait()
    print(f"rollback under a warehouse lock: {elapsed:.2f} s")
    assert status == 0 and (doc["from_version"], doc["to_version"], doc["actor"]) == (3, 2, "oncall")
    assert alias_version(home) == 2
    assert elapsed < 15  # far below DuckDB's ~100 s lock retry: nothing waited for the warehouse
    assert served_in_catalog(home) == (2, (FIRST_DAY + timedelta(days=28)).isoformat())


WRITER = textwrap.dedent(
    """
    import sys
    from datetime import date
    from pathlib import Path
    from factory_assets.ml import registry
    url, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with registry.connect(url) as con:
        for i in range(n):
            registry.register(con, date(2024, 11, 5), Path(f"/m/{tag}{i}.json"), f"{tag}-{i}", "candidate", "ok", {})
            registry.record_event(con, registry.latest_for_day(con, date(2024, 11, 5))["version"], "marked", tag)
    print("done", flush=True)
    """
)


def test_the_sqlite_registry_takes_writers_from_two_processes(tmp_path):
    url = registry.default_url(tmp_path)
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, url, tag, "40"], stdout=subprocess.PIPE, text=True,
                              cwd=str(Path(__file__).resolve().parents[2])) for tag in ("a", "b")]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0] and all("done" in o for o in outs)
    with registry.connect(url) as con:
        frame = registry.versions(con)
        history = registry.history(con)
        wal = con.exec_driver_sql("PRAGMA journal_mode").scalar()
    # 2 x 40 distinct manifests: versions 1..80, each registered once, no id taken twice
    assert frame["version"].tolist() == list(range(1, 81))
    assert sorted(frame["manifest_sha256"]) == sorted([f"a-{i}" for i in range(40)] + [f"b-{i}" for i in range(40)])
    assert (history["action"] == "registered").sum() == 80 and (history["action"] == "marked").sum() == 80
    assert wal == "wal"


def test_two_connections_see_each_others_commits(tmp_path):
    url = registry.default_url(tmp_path)
    with registry.connect(url) as first, registry.engine(url).connect() as second:
        registry.register(first, date(2024, 11, 5), Path("/m/1.json"), "sha-1", "candidate", "ok", {})
        assert registry.version_row(second, 1)["manifest_sha256"] == "sha-1"
        registry.register(second, date(2024, 11, 6), Path("/m/2.json"), "sha-2", "rejected", "gate", {})
        assert registry.versions(first)["status"].tolist() == ["candidate", "rejected"]
