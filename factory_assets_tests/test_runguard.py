"""Operator faults (issue "Trust under faults"): a killed run, SIGTERM, two runs at once, an unwritable home,
and how ``factory run`` reports gate verdicts and errors.

The quick cases use a real Dagster instance with the project's ``dagster.yaml`` and fabricate the state a
SIGKILL leaves (a STARTED run of a dead process holding the warehouse slot); two slow cases kill and stop a
real ``factory run`` process.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from dagster import (DagsterEventType, DagsterInstance, DagsterRun, DagsterRunStatus, Failure, RetryPolicy, RunsFilter,
                     job, op)

from factory_assets import cli
from factory_assets.platform import runguard, settings
from factory_assets_tests.helpers import REPO_ROOT

POOL = "warehouse"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    for name in ("FACTORY_SOURCE", "FACTORY_SOURCE_PATH", "FACTORY_WINDOW_DAYS", "FACTORY_HISTORY_DAYS",
                 "FACTORY_PARTITION_START", "FACTORY_EXECUTOR", "FACTORY_ALS_GPU", "FACTORY_SLOT_WAIT_S"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FACTORY_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))


@pytest.fixture
def instance(tmp_path):
    path = settings.dagster_home(tmp_path / "home")
    with DagsterInstance.from_config(str(path)) as inst:
        yield inst


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _killed_run(instance, pid: int, step: str = "raw_events") -> str:
    """The state ``kill -9`` leaves: a STARTED run of ``pid`` that holds the warehouse pool's only slot."""
    run_id = str(uuid.uuid4())
    instance.add_run(DagsterRun(job_name="daily_ingest", run_id=run_id, status=DagsterRunStatus.STARTED,
                                tags={runguard.PID_TAG: str(pid), "dagster/partition": "2024-10-05"}))
    instance.event_log_storage.initialize_concurrency_limit_to_default(POOL)  # as a run does first
    status = instance.event_log_storage.claim_concurrency_slot(POOL, run_id, step)
    assert status.is_claimed  # the one slot (default_limit: 1 in dagster.yaml) is now the dead run's
    return run_id


def test_a_killed_runs_slot_blocks_the_pool_until_it_is_reaped(instance):
    run_id = _killed_run(instance, _dead_pid())
    # before: a new run waits for the slot, says who holds it, and gives up after the bound (it used to hang)
    with pytest.raises(runguard.SlotWaitTimeout, match=f"held by run {run_id} \\(daily_ingest 2024-10-05, step raw_events\\)"):
        _wait_without_reaping(instance)
    touched = runguard.reap_dead_runs(instance, (POOL,))
    assert [t["run_id"] for t in touched] == [run_id] and touched[0]["action"] == "marked failed"
    run = instance.get_run_by_id(run_id)
    assert run.status == DagsterRunStatus.FAILURE
    failure = instance.get_records_for_run(run_id, of_type=DagsterEventType.RUN_FAILURE).records
    assert "is gone (killed or crashed)" in failure[0].event_log_entry.dagster_event.message
    info = instance.event_log_storage.get_concurrency_info(POOL)
    assert info.claimed_slots == [] and info.pending_steps == []
    assert runguard.wait_for_pool(instance, POOL, timeout_s=0.5, poll_s=0.1) < 0.5  # free at once


def _wait_without_reaping(instance):
    """``wait_for_pool`` with reaping switched off: what a rerun saw before the fix."""
    original = runguard.reap_dead_runs
    runguard.reap_dead_runs = lambda *a, **k: []
    try:
        return runguard.wait_for_pool(instance, POOL, timeout_s=0.5, poll_s=0.1)
    finally:
        runguard.reap_dead_runs = original


def test_a_run_killed_before_it_started_is_failed_too(instance):
    run_id = str(uuid.uuid4())
    instance.add_run(DagsterRun(job_name="daily_ingest", run_id=run_id, status=DagsterRunStatus.NOT_STARTED,
                                tags={runguard.PID_TAG: str(_dead_pid())}))
    queued = str(uuid.uuid4())  # a daemon's run, not launched yet, no factory/pid tag: left alone
    instance.add_run(DagsterRun(job_name="daily_ingest", run_id=queued, status=DagsterRunStatus.NOT_STARTED))
    assert [t["run_id"] for t in runguard.reap_dead_runs(instance, (POOL,))] == [run_id]
    assert instance.get_run_by_id(run_id).status == DagsterRunStatus.FAILURE
    assert instance.get_run_by_id(queued).status == DagsterRunStatus.NOT_STARTED


def test_a_live_runs_slot_is_waited_for_then_given_up_with_its_holder(instance, caplog):
    run_id = _killed_run(instance, os.getpid())  # alive: this process
    caplog.set_level("WARNING", logger="factory")
    started = time.monotonic()
    with pytest.raises(runguard.SlotWaitTimeout, match="gave up after 1 s waiting for pool 'warehouse'"):
        runguard.wait_for_pool(instance, POOL, timeout_s=1.0, poll_s=0.2)
    assert 1.0 <= time.monotonic() - started < 5
    waits = [r.getMessage() for r in caplog.records if "waiting for pool" in r.getMessage()]
    assert len(waits) == 1 and run_id in waits[0]  # said once, naming the holder
    assert instance.get_run_by_id(run_id).status == DagsterRunStatus.STARTED  # a live run is never reaped


def test_a_run_stuck_inside_dagster_waiting_for_the_slot_is_given_up(instance):
    # the slot was taken between the pre-check and the run's first step (automation under dagster dev): Dagster's
    # in-process executor would wait without limit; the watchdog bounds it
    holder = _killed_run(instance, os.getpid())
    waiting = str(uuid.uuid4())
    instance.add_run(DagsterRun(job_name="daily_training", run_id=waiting, status=DagsterRunStatus.STARTED))
    assert not instance.event_log_storage.claim_concurrency_slot(POOL, waiting, "training_window").is_claimed
    calls = []
    with runguard.slot_watchdog(instance, POOL, waiting, timeout_s=0.5, on_timeout=calls.append, poll_s=0.1):
        deadline = time.monotonic() + 10
        while not calls and time.monotonic() < deadline:
            time.sleep(0.1)
    assert len(calls) == 1 and calls[0].startswith(f"gave up after 0 s waiting for pool 'warehouse' in run {waiting}")
    assert f"held by run {holder} (daily_ingest 2024-10-05, step raw_events)" in calls[0]
    runguard.abandon_run(instance, waiting, calls[0])
    assert instance.get_run_by_id(waiting).status == DagsterRunStatus.FAILURE
    info = instance.event_log_storage.get_concurrency_info(POOL)
    assert [s.run_id for s in info.claimed_slots] == [holder]  # the live holder keeps its slot
    assert waiting not in {p.run_id for p in info.pending_steps}  # the abandoned run no longer queues for it


def test_a_reused_pid_counts_as_dead():
    # a run created ten days before this process started cannot be this process's run: the pid was reused
    assert runguard.process_alive(os.getpid(), since=time.time())
    assert not runguard.process_alive(os.getpid(), since=time.time() - 10 * 24 * 3600)
    assert not runguard.process_alive(_dead_pid())


def test_slots_of_finished_runs_are_freed(instance):
    run_id = _killed_run(instance, os.getpid())
    instance.report_run_failed(instance.get_run_by_id(run_id), "failed without freeing its slot")
    assert [t["action"] for t in runguard.reap_dead_runs(instance, (POOL,))] == ["freed warehouse"]
    assert instance.event_log_storage.get_concurrency_info(POOL).claimed_slots == []


def test_a_second_factory_run_on_a_home_in_use_is_refused(tmp_path, capsys):
    home = tmp_path / "home"
    with runguard.home_lock(home):
        assert cli.main(["run", "--json", "--home", str(home)]) == 2
    out, err = capsys.readouterr()
    error = json.loads(out)["error"]
    assert error.startswith(f"factory: the home {home} is in use by another factory run (pid {os.getpid()}, started ")
    assert "Traceback" not in err


_CREATE = """
import sys, time
from pathlib import Path
from factory_assets.platform import runguard
while time.time() < float(sys.argv[2]):
    time.sleep(0.001)
runguard.open_instance(Path(sys.argv[1])).dispose()
"""


def test_instances_created_by_several_processes_at_once_are_not_corrupted(tmp_path):
    for attempt in range(2):
        home = settings.dagster_home(tmp_path / f"h{attempt}")
        go = time.time() + 3.0  # every process creates the instance at the same moment
        env = {**os.environ, "DAGSTER_HOME": str(home)}
        procs = [subprocess.Popen([sys.executable, "-c", _CREATE, str(home), str(go)], cwd=REPO_ROOT, env=env,
                                  stderr=subprocess.PIPE, text=True) for _ in range(3)]
        for p in procs:
            assert p.wait(timeout=120) == 0, p.stderr.read()[-2000:]
        with sqlite3.connect(home / "history" / "runs.db") as db:
            assert db.execute("SELECT count(*) FROM alembic_version").fetchone()[0] == 1
        with DagsterInstance.from_config(str(home)) as inst:
            assert inst.get_runs() == []


@pytest.mark.parametrize("how", ["not_permitted", "read_only_fs"])
def test_an_unwritable_home_is_one_line_and_exit_2(tmp_path, capsys, how):
    if how == "not_permitted":
        home = Path("/sys/factory-home-test")  # mkdir there fails with EPERM, even for root
    else:
        home = tmp_path / "ro"
        home.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(home)], capture_output=True).returncode:
            pytest.skip("cannot mount a read-only tmpfs here (needs root with CAP_SYS_ADMIN)")
    try:
        assert cli.main(["run", "--json", "--home", str(home)]) == 2
        out, err = capsys.readouterr()
        error = json.loads(out)["error"]
        assert error.startswith(f"factory: cannot write to {home}")
        assert ("operation not permitted" if how == "not_permitted" else "read-only file system") in error
        assert "Traceback" not in err and err.strip().splitlines()[-1] == error
    finally:
        if how == "read_only_fs":
            subprocess.run(["umount", str(home)], check=False)


# --------------------------------------------------------------------------- verdicts and errors
@op
def boom():
    raise ValueError("the source file /x/y.csv has no user_id column")


@op
def refused():
    raise Failure(description="candidate v3 for 2024-11-05 is rejected, not promotable")


@job
def boom_job():
    boom()


@job
def refused_job():
    refused()


def test_the_real_exception_is_reported_not_dagsters_wrapper():
    result = boom_job.execute_in_process(raise_on_error=False)
    assert cli._failure(result) == "boom: ValueError: the source file /x/y.csv has no user_id column"
    assert cli._outcome(result) == "error"
    result = refused_job.execute_in_process(raise_on_error=False)
    assert cli._failure(result) == "refused: candidate v3 for 2024-11-05 is rejected, not promotable"


@op(retry_policy=RetryPolicy(max_retries=1, delay=0))
def flaky():
    raise ConnectionError("the source timed out reading day 2024-10-03")


@job
def flaky_job():
    flaky()


def test_exhausted_retries_report_the_source_error_not_only_the_retry_count():
    result = flaky_job.execute_in_process(raise_on_error=False)
    assert cli._failure(result) == (
        "flaky: ConnectionError: the source timed out reading day 2024-10-03 (Exceeded max_retries of 1)")


def _summary(outcomes: list[str], served: bool = True, stopped: str | None = None) -> dict:
    return {"runs": [{"success": o == "ok", "outcome": o} for o in outcomes], "served_model": {"version": 1} if served else None,
            "stopped": stopped}


def test_exit_code_gate_rejections_are_the_factory_doing_its_job():
    assert cli.exit_code(_summary(["ok", "ok", "gate", "gate"])) == 0
    assert cli.exit_code(_summary(["ok", "error", "gate"])) == 1
    assert cli.exit_code(_summary(["ok", "gate"], served=False)) == 1  # nothing is served: not done
    assert cli.exit_code(_summary(["ok", "canceled"], stopped="SIGTERM")) == 143
    assert cli.exit_code(_summary(["ok", "canceled"], stopped="SIGINT")) == 130


# --------------------------------------------------------------------------- real processes (slow)
_SMALL = ("from factory_assets import cli\n"
          "import argparse, logging, sys\n"
          "logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
          "args = argparse.Namespace(source='simulator', path=None, start='2024-10-01', end='2024-10-16', backtest=False,"
          " home=sys.argv[1], json=True, verbose=False)\n"
          "try:\n"
          "    summary = cli.run(args, simulator={'n_users': 400, 'n_items': 120, 'events_per_day': 3000, 'seed': 11},"
          " candidate={'model_kind': 'blend'})\n"
          "except SystemExit as exc:\n"
          "    sys.exit(cli._refuse(exc.code, True))\n"
          "cli._emit(summary, True)\n"
          "sys.exit(cli.exit_code(summary))\n")


def _start(home: Path, dagster: Path) -> subprocess.Popen:
    env = {**os.environ, "FACTORY_HOME": str(home), "DAGSTER_HOME": str(dagster), "FACTORY_WINDOW_DAYS": "15",
           "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", _SMALL, str(home)], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _run_to_end(home: Path, dagster: Path) -> tuple[dict, str]:
    """The same command again, to its end: exit status 0, and its JSON summary and standard error."""
    proc = _start(home, dagster)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out), err


def _wait_for_ingested(home: Path, days: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until the process's log says ``days`` ingest runs were ok."""
    deadline = time.monotonic() + timeout
    seen = 0
    lines = []
    while time.monotonic() < deadline and seen < days:
        line = proc.stderr.readline()
        lines.append(line)
        seen += "daily_ingest" in line and ": ok (run" in line
    assert seen >= days, "".join(lines[-30:])


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_sigkill_mid_run_then_the_same_command_completes_unaided(tmp_path):
    home, dagster = tmp_path / "home", tmp_path / "dagster"
    proc = _start(home, dagster)
    _wait_for_ingested(home, 4, proc)
    proc.kill()
    proc.wait()
    summary, _ = _run_to_end(home, dagster)
    assert summary["served_model"] is not None and summary["stopped"] is None
    first = [t["verdict"] for t in summary["trained"]]
    assert first in (["promoted", "promoted"], ["promoted", "shadow"])  # a shadow is a gate's verdict: exit 0 too
    assert [r["action"] for r in summary["recovered"]] in (["marked failed"], [])  # [] if killed between two runs
    with DagsterInstance.from_config(str(dagster)) as inst:
        assert inst.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus.STARTED])) == []
        assert inst.event_log_storage.get_concurrency_info(POOL).claimed_slots == []
    # the same command once more (as `./dev run` twice in a row): exit 0, the older day is a backtest that is not
    # compared with the newer champion (it used to be rejected for the champion's leakage, exit 1)
    second, err = _run_to_end(home, dagster)
    assert "- DEBUG -" not in err and "alembic" not in err  # Dagster's DEBUG events only with --verbose
    expected = [("2024-10-15", "backtest"), ("2024-10-16", "champion")] if first[1] == "promoted" else \
        [("2024-10-15", "champion"), ("2024-10-16", "shadow")]  # the champion's own day reproduces it
    assert [(t["partition"], t["verdict"]) for t in second["trained"]] == expected
    assert second["served_model"] == summary["served_model"]
    assert second["evaluation"]["champion"]["version"] == summary["served_model"]["version"]  # compared on the same users


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_sigterm_stops_within_seconds_marks_the_run_canceled_and_the_rerun_completes(tmp_path):
    home, dagster = tmp_path / "home", tmp_path / "dagster"
    proc = _start(home, dagster)
    _wait_for_ingested(home, 3, proc)
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    out, err = proc.communicate(timeout=60)
    assert time.monotonic() - sent < runguard.STOP_GRACE_S + 5
    assert proc.returncode == 143, err[-3000:]
    summary = json.loads(out)
    assert summary["stopped"] == "SIGTERM"
    ingested = [r for r in summary["runs"] if r["outcome"] == "ok"]
    assert 3 <= len(ingested) < 16  # it stopped: not every remaining day was ingested
    with DagsterInstance.from_config(str(dagster)) as inst:
        statuses = {r.run_id: r.status for r in inst.get_runs()}
        assert DagsterRunStatus.STARTED not in statuses.values()
        if summary["runs"][-1]["outcome"] == "canceled":
            assert statuses[summary["runs"][-1]["run_id"]] == DagsterRunStatus.CANCELED
        assert inst.event_log_storage.get_concurrency_info(POOL).claimed_slots == []
    assert _run_to_end(home, dagster)[0]["served_model"] is not None
