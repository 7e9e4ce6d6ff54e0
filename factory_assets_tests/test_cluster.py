"""A real distributed run: the factory on the local cluster (PostgreSQL instance, redis broker, two Celery workers).

``deploy/local-cluster/up`` starts the cluster and writes its env file; ``FACTORY_CLUSTER_ENV`` names that file
(``.ci/run`` does both, and sets ``FACTORY_REQUIRE_CLUSTER=1`` so that a cluster that did not come up fails CI
instead of skipping).  The same range runs twice, on the cluster (``factory run --executor celery``, Parquet
storage) and in process, and everything they store must be the same.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from factory_assets_tests.helpers import REPO_ROOT

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(1500)]

START, END = "2024-10-01", "2024-10-16"  # 16 days: two candidates on the shortest window allowed (15 days)
WINDOW_DAYS = "15"


def cluster_env() -> dict[str, str]:
    """The cluster's variables from its env file (``export NAME=value`` lines), or skip/fail as CI asks."""
    path = os.environ.get("FACTORY_CLUSTER_ENV")
    if not path or not Path(path).exists():
        message = f"no local cluster (FACTORY_CLUSTER_ENV={path!r}): run deploy/local-cluster/up and export it"
        if os.environ.get("FACTORY_REQUIRE_CLUSTER"):
            pytest.fail(message)
        pytest.skip(message)
    env = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.startswith("export ") and "=" in line:
            name, value = line[len("export "):].split("=", 1)
            env[name] = value
    return env


def factory_run(home: Path, env: dict[str, str], *flags: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "factory_assets.cli", "run", "--start", START, "--end", END, "--home", str(home),
         "--storage", "parquet", "--json", *flags],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def ledger(home: Path) -> list[tuple]:
    import duckdb

    lake = home / "simulator" / "lake" / "partition_ledger"
    with duckdb.connect() as con:
        return con.execute("SELECT asset, partition_day, data_version, row_count FROM read_parquet(?, "
                           "hive_partitioning = false) ORDER BY 1, 2", [f"{lake}/**/*.parquet"]).fetchall()


def test_a_range_on_the_celery_cluster_equals_the_in_process_run(tmp_path, monkeypatch):
    cluster = cluster_env()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "FACTORY_"))}
    base |= {"FACTORY_WINDOW_DAYS": WINDOW_DAYS, "OPENBLAS_NUM_THREADS": "1"}
    on_cluster = factory_run(tmp_path / "cluster", {**base, **cluster, "FACTORY_HOME": str(tmp_path / "cluster")},
                             "--executor", "celery")
    in_process = factory_run(tmp_path / "local", base)

    # every run succeeded, none stopped on a lock; the same days and the same decisions
    assert all(r["outcome"] == "ok" for r in on_cluster["runs"]), [r for r in on_cluster["runs"] if r["outcome"] != "ok"]
    assert on_cluster["partitions"] == in_process["partitions"] and len(on_cluster["partitions"]) == 16
    assert [(t["partition"], t["verdict"], t["version"]) for t in on_cluster["trained"]] == \
        [(t["partition"], t["verdict"], t["version"]) for t in in_process["trained"]]
    assert len(on_cluster["trained"]) == 2
    # byte-identical artefacts and feature store, the same champion
    assert digests(tmp_path / "cluster" / "simulator" / "artefacts") == \
        digests(tmp_path / "local" / "simulator" / "artefacts")
    assert ledger(tmp_path / "cluster") == ledger(tmp_path / "local")
    assert on_cluster["served_model"]["sha256"] == in_process["served_model"]["sha256"]

    # the steps ran on the Celery workers, on more than one of them, and no step hit a lock
    workers, lock_errors, launcher_pids = set(), [], set()
    for name, value in cluster.items():  # the cluster's instance (PostgreSQL): this process reads its event log
        monkeypatch.setenv(name, value)
    from dagster import DagsterEventType, DagsterInstance

    with DagsterInstance.get() as instance:
        for row in on_cluster["runs"]:
            launcher_pids.add(instance.get_run_by_id(row["run_id"]).tags.get("factory/pid"))
            for entry in instance.all_logs(row["run_id"]):
                event = entry.dagster_event
                engine = event is not None and event.event_type == DagsterEventType.ENGINE_EVENT
                metadata = (event.engine_event_data.metadata or {}) if engine else {}
                if "Celery worker" in metadata:  # dagster-celery's event of each step it ran
                    workers.add(metadata["Celery worker"].value)
                message = (entry.message or "").lower()
                if "lock" in message and ("error" in message or "conflict" in message):
                    lock_errors.append(entry.message)
    assert len(workers) >= 2, workers
    assert not lock_errors, lock_errors[:3]
    assert len(launcher_pids) >= 2  # several launcher processes: days in flight at once
