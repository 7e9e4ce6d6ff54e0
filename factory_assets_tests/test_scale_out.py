"""The scale-out path: executor selection, a real multiprocess run under the warehouse pool, the deploy configs."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
import yaml
from dagster import AssetKey, DagsterEventType, DagsterInstance, in_process_executor, multiprocess_executor
from dagster._config import validate_config
from dagster._core.instance.config import dagster_instance_config_schema
from dagster._core.instance.ref import InstanceRef

from factory_assets.platform import executors, settings
from factory_assets.platform.partitions import WAREHOUSE_POOL
from factory_assets.resources import Factory
from factory_assets_tests.helpers import REPO_ROOT, SMALL_SHOP, run, small_factory

DEPLOY = REPO_ROOT / "deploy"
DAY = date(2024, 10, 1)
# raw_events, then two feature views that are ready together and compete for the one warehouse slot.  The whole
# job works the same way but takes ~45 s on 2 cores: a pool-blocked step re-polls with a growing back-off.
STEPS = ["raw_events", "user_item_daily", "item_daily"]
PROJECT_INSTANCE = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _validates(config_schema, value: dict) -> None:
    result = validate_config(config_schema.config_type, value)
    assert result.success, [error.message for error in result.errors]


# --- executor selection -------------------------------------------------------------------------------------------


def test_the_default_executor_is_in_process(monkeypatch):
    monkeypatch.delenv("FACTORY_EXECUTOR", raising=False)
    assert settings.executor_name() == "in_process"
    assert executors.executor_for() is in_process_executor


@pytest.mark.parametrize(("name", "expected"), [("in_process", in_process_executor), ("multiprocess", multiprocess_executor)])
def test_each_local_name_maps_to_dagsters_own_executor(monkeypatch, name, expected):
    monkeypatch.setenv("FACTORY_EXECUTOR", name)
    assert executors.executor_for() is expected
    assert executors.executor_for(name) is expected


def test_an_unknown_executor_name_is_refused_with_the_known_ones(monkeypatch):
    monkeypatch.setenv("FACTORY_EXECUTOR", "ray")
    with pytest.raises(ValueError, match=r"FACTORY_EXECUTOR='ray' is not one of in_process, multiprocess, celery, k8s"):
        executors.executor_for()
    with pytest.raises(ValueError, match=r"unknown executor 'dask'"):
        executors.executor_for("dask")


@pytest.mark.parametrize(("name", "module", "extra", "distribution"), [
    ("celery", "dagster_celery", "celery", "dagster-celery"), ("k8s", "dagster_k8s", "k8s", "dagster-k8s"),
])
def test_a_distributed_executor_without_its_package_names_the_extra(monkeypatch, name, module, extra, distribution):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError, installed or not
    with pytest.raises(executors.MissingExecutorPackage) as excinfo:
        executors.executor_for(name)
    message = str(excinfo.value)
    assert f"FACTORY_EXECUTOR={name} needs the {distribution} package" in message
    assert f"pip install 'factory_assets[{extra}]'" in message


def test_the_extras_pin_the_same_dagster_family_as_the_project():
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    duckdb_pin = next(d for d in project["dependencies"] if d.startswith("dagster-duckdb=="))
    family = duckdb_pin.split("==")[1]
    extras = project["optional-dependencies"]
    assert f"dagster-celery=={family}" in extras["celery"]
    assert f"dagster-k8s=={family}" in extras["k8s"]
    for _, _, extra, _ in executors.OPTIONAL_EXECUTORS.values():
        assert extra in extras


def test_celery_executor_reads_broker_and_backend_from_the_environment():
    if not _installed("dagster_celery"):
        pytest.skip("dagster-celery is not installed (pip install -e '.[celery]'): real-schema check skipped")
    from dagster_celery import celery_executor

    executor_def = executors.executor_for("celery")
    assert executor_def.name == "celery"
    assert executor_def.executor_creation_fn is celery_executor.executor_creation_fn
    _validates(celery_executor.config_schema, executors.celery_config())
    worker = yaml.safe_load((DEPLOY / "celery" / "celery.yaml").read_text())["execution"]["config"]
    _validates(celery_executor.config_schema, worker)
    assert {k: worker[k] for k in ("broker", "backend")} == executors.celery_config()


def test_k8s_executor_is_dagsters_k8s_job_executor_and_the_example_run_config_fits_it():
    if not _installed("dagster_k8s"):
        pytest.skip("dagster-k8s is not installed (pip install -e '.[k8s]'): real-schema check skipped")
    from dagster_k8s import k8s_job_executor

    assert executors.executor_for("k8s") is k8s_job_executor
    run_config = yaml.safe_load((DEPLOY / "k8s" / "run_config.yaml").read_text())
    _validates(k8s_job_executor.config_schema, run_config["execution"]["config"])


# --- deploy configuration -----------------------------------------------------------------------------------------


def test_multiprocess_run_config_fits_dagsters_schema():
    run_config = yaml.safe_load((DEPLOY / "multiprocess" / "run_config.yaml").read_text())
    _validates(multiprocess_executor.config_schema, run_config["execution"]["config"])
    assert run_config["execution"]["config"]["max_concurrent"] > 1


def test_helm_values_select_the_k8s_executor_and_mirror_the_projects_pools():
    values = yaml.safe_load((DEPLOY / "k8s" / "values.yaml").read_text())
    assert values["dagsterHome"].startswith("/")
    deployments = {d["name"]: d for d in values["dagster-user-deployments"]["deployments"]}
    assert values["dagster-user-deployments"]["enabled"] is True
    # the two code locations of workspace.yaml, one code server each
    workspace = yaml.safe_load((REPO_ROOT / "workspace.yaml").read_text())
    modules = {e["python_module"]["location_name"]: e["python_module"]["module_name"] for e in workspace["load_from"]}
    assert {name: d["codeServerArgs"] for name, d in deployments.items()} == {
        name: ["-m", module] for name, module in modules.items()}
    assert len({d["port"] for d in deployments.values()}) == 2
    for deployment in deployments.values():
        env = {item["name"]: item.get("value") for item in deployment["env"]}
        assert env["FACTORY_EXECUTOR"] == "k8s"
        assert env["FACTORY_HOME"] in {mount["mountPath"] for mount in deployment["volumeMounts"]}
        assert "FACTORY_REGISTRY_URL" in env
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    coordinator = values["dagsterDaemon"]["runCoordinator"]
    assert coordinator["enabled"] is True and coordinator["type"] == "QueuedRunCoordinator"
    assert (coordinator["config"]["queuedRunCoordinator"]["dequeueIntervalSeconds"]
            == PROJECT_INSTANCE["run_coordinator"]["config"]["dequeue_interval_seconds"])
    pools, project_pools = values["concurrency"]["pools"], PROJECT_INSTANCE["concurrency"]["pools"]
    assert values["concurrency"]["enabled"] is True
    assert (pools["defaultLimit"], pools["granularity"], pools["opGranularityRunBuffer"]) == (
        project_pools["default_limit"], project_pools["granularity"], project_pools["op_granularity_run_buffer"])
    assert values["concurrency"]["runs"]["maxConcurrentRuns"] == PROJECT_INSTANCE["concurrency"]["runs"]["max_concurrent_runs"]


def test_celery_instance_is_valid_shares_postgres_and_keeps_the_projects_pools():
    instance = yaml.safe_load((DEPLOY / "celery" / "dagster.yaml").read_text())
    result = validate_config(dagster_instance_config_schema(), instance)
    assert result.success, [error.message for error in result.errors]
    assert instance["storage"]["postgres"]["postgres_url"] == {"env": "DAGSTER_PG_URL"}
    assert instance["concurrency"] == PROJECT_INSTANCE["concurrency"]
    assert instance["run_coordinator"] == PROJECT_INSTANCE["run_coordinator"]


def test_dockerfile_serves_the_same_code_location_with_an_existing_extra():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert '"-m", "factory_assets.definitions"' in dockerfile
    assert "ARG EXTRAS=k8s" in dockerfile and 'pip install --no-cache-dir ".[${EXTRAS}]"' in dockerfile


# --- a real multiprocess run --------------------------------------------------------------------------------------


def _step_windows(instance: DagsterInstance, run_id: str) -> dict[str, tuple[float, float, int]]:
    """Per step: (start, end) timestamps in seconds and the pid that ran it."""
    starts, ends, pids = {}, {}, {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type == DagsterEventType.STEP_START:
            starts[event.step_key], pids[event.step_key] = entry.timestamp, event.pid
        elif event.event_type in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
            ends[event.step_key] = entry.timestamp
    return {key: (starts[key], ends[key], pids[key]) for key in starts}


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_daily_ingest_on_the_multiprocess_executor_respects_the_warehouse_pool(tmp_path):
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text((REPO_ROOT / "dagster.yaml").read_text())
    resources = tmp_path / "resources.yaml"
    resources.write_text(yaml.safe_dump({"resources": Factory(
        home=str(tmp_path / "home"), source="simulator", source_path="", simulator=SMALL_SHOP).run_config()}))
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "FACTORY_EXECUTOR": "multiprocess",
           "FACTORY_HOME": str(tmp_path / "home"), "OPENBLAS_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "dagster", "job", "execute", "-m", "factory_assets.definitions", "-j", "daily_ingest",
         "-c", str(DEPLOY / "multiprocess" / "run_config.yaml"), "-c", str(resources),
         "--op-selection", ",".join(STEPS), "--tags", json.dumps({"dagster/partition": DAY.isoformat()})],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=170,
    )
    assert out.returncode == 0, out.stderr[-3000:]

    instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(dagster_home)))
    (dagster_run,) = instance.get_runs()
    assert dagster_run.is_success and dagster_run.job_name == "daily_ingest"
    windows = _step_windows(instance, dagster_run.run_id)
    assert set(windows) == set(STEPS)
    # a process per step, none of them the run worker's
    run_pid = next(e.dagster_event.pid for e in instance.all_logs(dagster_run.run_id, of_type=DagsterEventType.RUN_START))
    step_pids = {pid for _, _, pid in windows.values()}
    assert len(step_pids) == len(STEPS) and run_pid not in step_pids
    # max_concurrent allows several steps, the pool (limit 1) lets one hold the warehouse at a time
    ordered = sorted(windows.values())
    assert all(prev_end <= next_start for (_, prev_end, _), (next_start, _, _) in zip(ordered, ordered[1:]))
    messages = [e.message for e in instance.all_logs(dagster_run.run_id, of_type=DagsterEventType.ENGINE_EVENT)]
    assert any(f"blocked by limit for pool {WAREHOUSE_POOL}" in (m or "") for m in messages)

    # the same day gives the same data as the default in-process executor
    multi = instance.get_latest_materialization_event(AssetKey("raw_events")).asset_materialization
    single = run(small_factory(tmp_path / "in_process_home"), DAY, STEPS)
    assert single.success
    (single_raw,) = single.asset_materializations_for_node("raw_events")
    assert multi.tags["dagster/data_version"] == single_raw.tags["dagster/data_version"]


def test_als_gpu_switch_is_off_by_default_and_refuses_a_gpu_it_does_not_have(monkeypatch):
    import implicit.gpu

    from factory_assets.platform import settings

    monkeypatch.delenv("FACTORY_ALS_GPU", raising=False)
    assert settings.als_gpu() is False
    monkeypatch.setenv("FACTORY_ALS_GPU", "sometimes")
    with pytest.raises(ValueError, match="off, auto, on"):
        settings.als_gpu()
    monkeypatch.setenv("FACTORY_ALS_GPU", "auto")
    assert settings.als_gpu() is bool(implicit.gpu.HAS_CUDA)
    if not implicit.gpu.HAS_CUDA:
        monkeypatch.setenv("FACTORY_ALS_GPU", "on")
        with pytest.raises(settings.SettingsError, match="without CUDA"):
            settings.als_gpu()
