"""``dagster dev -w workspace.yaml`` on an empty home runs the factory by itself across its two code locations:
the DataOps location's automation ingests and builds the feature views, the MLOps location's automation sees
those feature partitions and trains, gates and serves the candidate; the served model's freshness policy
reports a status; each location reloads on its own -- all checked through the GraphQL API.

The test starts ``dagster dev`` on 127.0.0.1 (a free port) in its own process session with a temporary
FACTORY_HOME / DAGSTER_HOME (seeded with the project's dagster.yaml, as ``factory dev`` does), and stops it,
and only it (its process group), at the end.  To stay short it uses the smallest window the factory allows
(15 days) and a partitions definition that starts 15 days ago, so the catch-up is one window of days; the
automation sensor and the freshness daemon evaluate every 5 s instead of 30 s.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from factory_assets.data.defs.definitions import AUTOMATION_SENSOR as DATA_AUTOMATION
from factory_assets.ml.defs.definitions import AUTOMATION_SENSOR as ML_AUTOMATION
from factory_assets.platform.automation import AUTOMATION_RUN_TAGS
from factory_assets.platform.keys import DATA_KEYS as _DATA_KEYS, ML_KEYS as _ML_KEYS
from factory_assets.platform.settings import PROJECT_DAGSTER_YAML
from factory_assets_tests.helpers import REPO_ROOT

WINDOW_DAYS = 15
DATA_KEYS, ML_KEYS = set(_DATA_KEYS), set(_ML_KEYS)
# About 80 s on an idle 2-core machine (15 catch-up runs, then the window/drift run and the candidate run);
# the deadline leaves room for a loaded machine, and the test stops as soon as the served model is fresh.
DEADLINE_S = 240

QUERY = """
query Factory($sensor: SensorSelector!, $dataSensor: SensorSelector!) {
  workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } }
  lineage: assetNodes(assetKeys: [{path: ["training_window"]}, {path: ["candidate_model"]}]) {
    assetKey { path } repository { location { name } } dependencyKeys { path }
  }
  dataSensor: sensorOrError(sensorSelector: $dataSensor) {
    ... on Sensor { sensorState { status ticks(limit: 200) { status runIds } } }
  }
  runsOrError(filter: {tags: [{key: "dagster/from_automation_condition", value: "true"}]}) {
    ... on Runs { results { runId status tags { key value } assetSelection { path } } }
  }
  assetNodes(assetKeys: [{path: ["served_model"]}]) {
    freshnessStatusInfo { freshnessStatus }
    assetMaterializations(limit: 1) { partition runId }
  }
  sensorOrError(sensorSelector: $sensor) {
    ... on Sensor { sensorState { status ticks(limit: 200) { status runIds } } }
  }
}
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


RELOAD = """
mutation Reload($name: String!) {
  reloadRepositoryLocation(repositoryLocationName: $name) {
    ... on WorkspaceLocationEntry { name loadStatus locationOrLoadError { __typename } }
  }
}
"""


def _graphql(port: int, variables: dict, query: str = QUERY) -> dict | None:
    body = json.dumps({"query": query, "variables": variables}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())["data"]
    except (urllib.error.URLError, OSError, KeyError, ValueError):
        return None  # not up yet


def _stop(proc: subprocess.Popen) -> None:
    """SIGINT to dagster dev (it shuts its webserver and daemon down), then SIGKILL whatever is left of
    the process group it leads (only processes this test started are in it)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


def _reset_sigint() -> None:  # in the child, before exec: a shell may have started us with SIGINT ignored
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
@pytest.mark.timeout(DEADLINE_S + 60)
def test_dagster_dev_on_an_empty_home_reaches_a_served_model_by_itself(tmp_path):
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    shutil.copyfile(PROJECT_DAGSTER_YAML, dagster_home / "dagster.yaml")
    today = datetime.now(timezone.utc).date()
    env = {
        **os.environ,
        "FACTORY_HOME": str(tmp_path / "home"),
        "DAGSTER_HOME": str(dagster_home),
        "FACTORY_SOURCE": "simulator",
        "FACTORY_WINDOW_DAYS": str(WINDOW_DAYS),
        "FACTORY_PARTITION_START": (today - timedelta(days=WINDOW_DAYS)).isoformat(),
        "FACTORY_AUTOMATION_INTERVAL_S": "5",
        "FRESHNESS_DAEMON_INTERVAL_SECONDS": "5",
        "FACTORY_ALERT_WEBHOOK_URL": "",
        "OPENBLAS_NUM_THREADS": "1",
    }
    port = _free_port()
    variables = {
        "sensor": {"repositoryLocationName": "mlops", "repositoryName": "__repository__", "sensorName": ML_AUTOMATION},
        "dataSensor": {"repositoryLocationName": "dataops", "repositoryName": "__repository__", "sensorName": DATA_AUTOMATION},
    }
    started = time.monotonic()
    with open(tmp_path / "dagster-dev.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_reset_sigint,
        )
        data, freshness, served, first_freshness = None, None, None, None
        try:
            while time.monotonic() - started < DEADLINE_S:
                assert proc.poll() is None, "dagster dev exited"
                data = _graphql(port, variables)
                if data:
                    (node,) = data["assetNodes"]
                    freshness = (node["freshnessStatusInfo"] or {}).get("freshnessStatus")
                    first_freshness = first_freshness or freshness
                    served = node["assetMaterializations"][0] if node["assetMaterializations"] else None
                    # done: the served model is fresh and no automation run is still going (the run that
                    # served it may still be on its last step, the shadow evaluation)
                    in_flight = [r for r in data["runsOrError"]["results"]
                                 if r["status"] in ("QUEUED", "NOT_STARTED", "STARTING", "STARTED")]
                    if served and freshness == "HEALTHY" and not in_flight:
                        break
                time.sleep(2)
            elapsed = time.monotonic() - started
            # each location reloads on its own: the MLOps one is reloaded, the DataOps one is untouched
            reloaded = _graphql(port, {"name": "mlops"}, RELOAD)
            after = _graphql(port, variables)
        finally:
            _stop(proc)
    log_tail = (tmp_path / "dagster-dev.log").read_text(errors="replace")[-3000:]
    assert data is not None, f"the GraphQL API never answered:\n{log_tail}"

    # two code locations, both loaded; one lineage graph across them
    locations = {e["name"]: e["loadStatus"] for e in data["workspaceOrError"]["locationEntries"]}
    assert locations == {"dataops": "LOADED", "mlops": "LOADED"}
    lineage = {"/".join(n["assetKey"]["path"]): n for n in data["lineage"]}
    assert lineage["training_window"]["repository"]["location"]["name"] == "mlops"
    assert {"user_item_daily", "item_daily"} <= {"/".join(k["path"]) for k in lineage["training_window"]["dependencyKeys"]}
    # each location's automation sensor runs by default (nobody clicked anything) and launched runs
    state, data_state = data["sensorOrError"]["sensorState"], data["dataSensor"]["sensorState"]
    assert state["status"] == "RUNNING" and data_state["status"] == "RUNNING"
    ticks = state["ticks"]
    assert sum(1 for t in ticks if t["runIds"]) >= 1, ticks
    assert sum(1 for t in data_state["ticks"] if t["runIds"]) >= 1, data_state["ticks"]
    # reloading the MLOps location leaves both loaded
    assert reloaded is not None and reloaded["reloadRepositoryLocation"]["name"] == "mlops", reloaded
    assert reloaded["reloadRepositoryLocation"]["locationOrLoadError"]["__typename"] == "RepositoryLocation", reloaded
    assert after is not None
    assert {e["name"]: e["loadStatus"] for e in after["workspaceOrError"]["locationEntries"]} == locations

    # automation launched every run, each succeeded, and no asset partition was run twice
    runs = data["runsOrError"]["results"]
    assert runs, f"no automation runs:\n{log_tail}"
    assert all(r["status"] == "SUCCESS" for r in runs), [(r["runId"], r["status"]) for r in runs]
    for run in runs:
        tags = {t["key"]: t["value"] for t in run["tags"]}
        assert tags["dagster/sensor_name"] in (DATA_AUTOMATION, ML_AUTOMATION)
        # assets of the two locations never share a run: each run is one location's
        selected = {"/".join(a["path"]) for a in run["assetSelection"]}
        assert selected <= DATA_KEYS or selected <= ML_KEYS, selected
        assert (tags["dagster/sensor_name"] == DATA_AUTOMATION) == (selected <= DATA_KEYS), (selected, tags)
        assert all(tags[k] == v for k, v in AUTOMATION_RUN_TAGS.items())
    # the daily runs (an unpartitioned run, e.g. the intraday refresh on its quarter-hour cron, has no partition)
    daily = [r for r in runs if any(t["key"] == "dagster/partition" for t in r["tags"])]
    planned = Counter(
        ("/".join(a["path"]), {t["key"]: t["value"] for t in r["tags"]}["dagster/partition"])
        for r in daily for a in r["assetSelection"]
    )
    assert max(planned.values()) == 1, [k for k, n in planned.items() if n > 1]
    assert len({p for _, p in planned}) == WINDOW_DAYS  # the catch-up: exactly one window of days

    # the served model's freshness policy reports a status (before the model exists too), ...
    assert first_freshness is not None and freshness is not None
    # ... and the served model for the last complete day appears, fresh
    assert served is not None, f"no served model after {elapsed:.0f} s:\n{log_tail}"
    assert served["partition"] == (today - timedelta(days=1)).isoformat()
    assert served["runId"] in {r["runId"] for r in runs}
    assert freshness == "HEALTHY", f"served_model freshness {freshness!r} after {elapsed:.0f} s"
    print(f"\ndagster dev: served model after {elapsed:.0f} s, {len(runs)} automation runs, "
          f"{len(ticks)} sensor ticks ({sum(1 for t in ticks if t['runIds'])} with runs), freshness {first_freshness} -> {freshness}")
