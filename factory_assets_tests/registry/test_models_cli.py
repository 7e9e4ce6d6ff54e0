"""``factory models list | show | diff`` in-process on a small shop with three champions and one rejection.

The registry home is built once per session (v1, v2, v3 promoted in turn, v4 rejected) and read in place by
the read-only commands; tests that change it work on :func:`copy_home` copies.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import duckdb
import pytest

from factory_assets import cli
from factory_assets.ml import registry
from factory_assets_tests import ml_helpers as ml
from factory_assets_tests.helpers import FIRST_DAY, days

PROMOTE_DAYS = [FIRST_DAY + timedelta(days=k) for k in (27, 28, 29)]  # v1, v2, v3: each becomes champion
REJECT_DAY = FIRST_DAY + timedelta(days=30)  # v4: rejected (an unreachable baseline margin)
ALWAYS_PROMOTE = {"champion_tolerance": 1.0}  # ModelPolicy fields: the champion gate always passes, a clean chain
NEVER_PASSES = {"baseline_margin": 10.0}

_BUILT: dict[Path, Path] = {}


def warehouse(home: Path) -> Path:
    return home / "simulator" / "warehouse.duckdb"


def aliases(home: Path) -> Path:
    return home / "simulator" / "aliases"


@pytest.fixture(scope="session")
def registry_home(tmp_path_factory) -> Path:
    """An ingested home plus four versions: v1 -> v2 -> v3 champion in turn (v3 serving), v4 rejected.

    Built once per session (the cache also serves the modules that import this fixture); do not mutate it.
    """
    ingested_home = ml.ingested(tmp_path_factory)
    if ingested_home not in _BUILT:
        home = tmp_path_factory.mktemp("models") / "home"
        shutil.copytree(ingested_home, home)
        for day in PROMOTE_DAYS:
            assert ml.train(home, day, **ALWAYS_PROMOTE).success, f"training {day} failed"
        assert not ml.train(home, REJECT_DAY, **NEVER_PASSES).success
        assert statuses(home) == {1: "retired", 2: "retired", 3: "champion", 4: "rejected"}
        _BUILT[ingested_home] = home
    return _BUILT[ingested_home]


copy_home = ml.copy_home


def statuses(home: Path) -> dict[int, str]:
    with ml.connect(home) as con:
        return {int(v): s for v, s in con.exec_driver_sql("SELECT version, status FROM model_versions").fetchall()}


def models(capsys, home: Path, *args: str) -> tuple[int, dict]:
    """Run ``factory models ARGS --json --home HOME`` in-process; return (exit status, the one JSON document)."""
    capsys.readouterr()
    status = cli.main(["models", *args, "--json", "--home", str(home), "--source", "simulator"])
    out = capsys.readouterr().out
    return status, json.loads(out)  # the whole of stdout is exactly one document


def registry_rows(home: Path) -> dict[int, dict]:
    with ml.connect(home) as con:
        return {int(v): registry.version_row(con, int(v)) for v in registry.versions(con)["version"]}


# --------------------------------------------------------------------------- list
def test_list_every_version_with_status_metric_and_aliases(registry_home, capsys):
    status, doc = models(capsys, registry_home, "list")
    assert status == 0
    rows = registry_rows(registry_home)
    assert doc["champion"] == 3 and doc["shadow"] is None and doc["source"] == "simulator"
    assert [v["version"] for v in doc["versions"]] == [1, 2, 3, 4]
    for v in doc["versions"]:
        row = rows[v["version"]]
        assert v["status"] == row["status"] and v["partition"] == row["partition_day"]
        assert v["ndcg_at_10"] == pytest.approx(row["metrics"]["evaluation"]["model"]["ndcg_at_10"])
        assert v["created_at"].startswith(row["created_at"].date().isoformat())
        assert v["champion"] is (v["version"] == 3) and v["shadow"] is False
    assert [v["partition"] for v in doc["versions"]] == [d.isoformat() for d in [*PROMOTE_DAYS, REJECT_DAY]]
    assert doc["versions"][3]["status"] == "rejected" and "beats_baseline" in doc["versions"][3]["reason"]


def test_list_prints_a_table_without_json(registry_home, capsys):
    capsys.readouterr()
    assert cli.main(["models", "list", "--home", str(registry_home)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "4 versions" in lines[0] and "champion v3" in lines[0]
    [v3] = [line for line in lines if line.split()[:1] == ["3"]]
    assert "champion" in v3.split()[2] and v3.rstrip().endswith("champion")


# --------------------------------------------------------------------------- show
def test_show_has_manifest_gates_history_and_the_exact_lineage(registry_home, capsys):
    status, doc = models(capsys, registry_home, "show", "3")
    assert status == 0
    row = registry_rows(registry_home)[3]
    assert (doc["version"], doc["status"], doc["aliases"]) == (3, "champion", ["champion"])
    assert doc["manifest_sha256"] == row["manifest_sha256"] and doc["integrity"]["ok"] is True
    assert doc["manifest"]["partition"] == PROMOTE_DAYS[2].isoformat()
    assert doc["manifest"]["artefacts"]["served"]["sha256"] == doc["integrity"]["artefacts"]["served"]["actual_sha256"]
    assert doc["metrics"] == row["metrics"]["evaluation"]
    assert [g["name"] for g in doc["gates"]] == ["beats_baseline", "not_worse_than_champion", "safe_to_serve"]
    assert all(g["passed"] for g in doc["gates"])
    assert [(h["action"], h["to_status"]) for h in doc["history"]] == [("registered", "candidate"), ("promoted", "champion")]

    lineage = doc["lineage"]
    window = days(PROMOTE_DAYS[2] - timedelta(days=27), 28)
    expected = {(view, d.isoformat()) for view in ("user_item_daily", "item_daily") for d in window}
    got = [(f["asset"], f["partition"]) for f in lineage["feature_partitions"]]
    assert len(got) == 56 and set(got) == expected
    with duckdb.connect(str(warehouse(registry_home)), read_only=True) as con:
        ledger = {(a, d.isoformat()): v for a, d, v in con.execute("SELECT asset, partition_day, data_version FROM partition_ledger").fetchall()}
    assert all(f["data_version"] == ledger[(f["asset"], f["partition"])] and f["current"] for f in lineage["feature_partitions"])
    assert lineage["current"] is True and lineage["stale"] == []
    assert [e["partition"] for e in lineage["event_partitions"]] == [d.isoformat() for d in window]
    assert all(e["matches_training"] and e["data_version"] == ledger[("raw_events", e["partition"])] for e in lineage["event_partitions"])
    assert (lineage["window"]["start"], lineage["window"]["end"]) == (window[0].isoformat(), window[-1].isoformat())
    assert lineage["feature_versions"] == doc["manifest"]["feature_versions"]


def test_show_reports_inputs_that_changed_since_training(registry_home, tmp_path, capsys):
    home = copy_home(registry_home, tmp_path / "home")
    changed = (PROMOTE_DAYS[2] - timedelta(days=3)).isoformat()
    with duckdb.connect(str(warehouse(home))) as con:
        # the raw day was re-ingested with other content and its user_item_daily partition rebuilt (not item_daily)
        con.execute("UPDATE partition_ledger SET data_version = 'raw-rebuilt' WHERE asset = 'raw_events' AND partition_day = ?", [changed])
        con.execute("UPDATE partition_ledger SET data_version = 'rebuilt' WHERE asset = 'user_item_daily' AND partition_day = ?", [changed])
    status, doc = models(capsys, home, "show", "3")
    assert status == 0
    lineage = doc["lineage"]
    assert lineage["current"] is False
    assert [(s["asset"], s["partition"], s["now"]) for s in lineage["stale"]] == [("user_item_daily", changed, "rebuilt")]
    [entry] = [f for f in lineage["feature_partitions"] if not f["current"]]
    assert (entry["partition"], entry["current_data_version"]) == (changed, "rebuilt")
    [event] = [e for e in lineage["event_partitions"] if not e["matches_training"]]
    assert (event["partition"], event["data_version"]) == (changed, "raw-rebuilt")


def test_show_unknown_version_is_a_clear_error(registry_home, capsys):
    status, doc = models(capsys, registry_home, "show", "99")
    assert status == 1
    assert doc["error"]["kind"] == "not_found" and "99" in doc["error"]["message"] and "[1, 2, 3, 4]" in doc["error"]["message"]


# --------------------------------------------------------------------------- diff
def test_diff_metrics_params_and_inputs(registry_home, capsys):
    status, doc = models(capsys, registry_home, "diff", "1", "3")
    assert status == 0
    rows = registry_rows(registry_home)
    a, b = rows[1]["metrics"]["evaluation"]["model"], rows[3]["metrics"]["evaluation"]["model"]
    for name in ("ndcg_at_10", "precision_at_10", "recall_at_10", "map_at_10", "coverage", "n_users"):
        assert doc["metrics"][name]["a"] == pytest.approx(a[name]) and doc["metrics"][name]["b"] == pytest.approx(b[name])
        assert doc["metrics"][name]["delta"] == pytest.approx(b[name] - a[name], abs=1e-12)
    pop = [rows[v]["metrics"]["evaluation"]["baselines"]["popularity"]["ndcg_at_10"] for v in (1, 3)]
    assert doc["baselines"]["popularity"]["delta"] == pytest.approx(pop[1] - pop[0], abs=1e-12)
    params = [json.loads(Path(rows[v]["manifest_path"]).read_text())["params"] for v in (1, 3)]
    assert doc["params"] == {k: {"a": params[0].get(k), "b": params[1].get(k)} for k in set(params[0]) | set(params[1])
                             if params[0].get(k) != params[1].get(k)}  # tuned hyper-parameters may differ

    manifests = {v: json.loads(Path(rows[v]["manifest_path"]).read_text()) for v in (1, 3)}
    ins = {v: {(i["asset"], i["partition"]): i["data_version"] for i in m["window"]["inputs"]} for v, m in manifests.items()}
    expected = {k for k in set(ins[1]) | set(ins[3]) if ins[1].get(k) != ins[3].get(k)}
    got = {(d["asset"], d["partition"]) for d in doc["inputs"]["differ"]}
    assert got == expected and len(got) == 8  # the windows are two days apart: 2 days x 2 views at each end
    assert doc["inputs"]["same"] == 52
    only_a = [d for d in doc["inputs"]["differ"] if d["b"] is None]
    assert sorted({d["partition"] for d in only_a}) == [FIRST_DAY.isoformat(), (FIRST_DAY + timedelta(days=1)).isoformat()]


def test_diff_shows_params_that_differ_and_human_output(registry_home, tmp_path, capsys):
    home = copy_home(registry_home, tmp_path / "home")
    manifest_path = Path(registry_rows(home)[2]["manifest_path"])
    manifest = json.loads(manifest_path.read_text())
    manifest["params"]["factors"] = 8  # the diff reads params from the manifest (integrity is `show`'s business)
    manifest_path.write_text(json.dumps(manifest))
    status, doc = models(capsys, home, "diff", "1", "2")
    params = [json.loads(Path(registry_rows(home)[v]["manifest_path"]).read_text())["params"] for v in (1, 2)]
    expected = {k: {"a": params[0].get(k), "b": params[1].get(k)} for k in set(params[0]) | set(params[1])
                if params[0].get(k) != params[1].get(k)}  # tuned values (e.g. ranker_c) may differ too
    assert status == 0 and doc["params"] == expected and expected["factors"]["b"] == 8
    capsys.readouterr()
    assert cli.main(["models", "diff", "1", "2", "--home", str(home)]) == 0
    out = capsys.readouterr().out
    assert "ndcg_at_10" in out and f"factors {params[0]['factors']} -> 8" in out


# --------------------------------------------------------------------------- the warehouse lock
HOLD_LOCK = textwrap.dedent(
    """
    import sys, time, duckdb
    con = duckdb.connect(sys.argv[1])  # read-write: DuckDB then lets no other process open the file
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    con.close()
    """
)


def _hold_lock(path: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_list_diff_and_show_do_not_wait_for_a_writer_holding_the_warehouse(registry_home, tmp_path, capsys):
    """The registry is its own store: only show's lineage needs the warehouse, and show answers without it."""
    home = copy_home(registry_home, tmp_path / "home")
    proc = _hold_lock(warehouse(home), 60)
    try:
        started = time.monotonic()
        status, listed = models(capsys, home, "list")
        list_s = time.monotonic() - started
        status_diff, diffed = models(capsys, home, "diff", "1", "3")
        started = time.monotonic()
        status_show, shown = models(capsys, home, "show", "3", "--timeout", "0.5")
        show_s = time.monotonic() - started
    finally:
        proc.kill()
        proc.wait()
    assert status == 0 and [v["version"] for v in listed["versions"]] == [1, 2, 3, 4] and list_s < 5
    assert status_diff == 0 and diffed["inputs"]["same"] == 52
    assert status_show == 0 and shown["status"] == "champion" and shown["lineage"] is None and show_s < 5
    assert "locked by another process" in shown["lineage_error"] and f"PID {proc.pid}" in shown["lineage_error"]


def test_a_home_with_nothing_registered_lists_nothing(tmp_path, capsys):
    (tmp_path / "empty" / "simulator").mkdir(parents=True)
    status, doc = models(capsys, tmp_path / "empty", "list")
    assert status == 0 and doc["versions"] == [] and doc["champion"] is None
    assert not (tmp_path / "empty" / "simulator" / registry.REGISTRY_FILE).exists()  # reading creates nothing
    status, doc = models(capsys, tmp_path / "nowhere", "list")
    assert status == 1 and doc["error"]["kind"] == "not_found"
