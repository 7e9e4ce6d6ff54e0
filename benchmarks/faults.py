"""Operator faults: does ``factory run`` survive SIGKILL, SIGTERM, a second run, a flaky source, an unwritable
home and ``dagster dev`` on the same home?

    python benchmarks/faults.py --json OUT [--kills 20] [--terms 5] [--concurrent 5] [--seed 0] [--quick]
                                [--dev] [--only kill,term,...] [--keep] [--tmp DIR]

Every run is a real ``factory run --json`` in its own Python process: this script's ``--child`` mode calls
``factory_assets.cli.run(args, simulator=SIMULATOR, candidate={"model_kind": "blend"})`` on a small shop
(400 users, 120 items, 3000 events/day, seed 11), ``FACTORY_WINDOW_DAYS=15``, 2024-10-01 .. 2024-10-18 (18
``daily_ingest`` runs, then 4 ``daily_training`` runs), and emits the summary and exits exactly as ``factory``
does (``_dispatch``: a refusal is exit status 2 with ``{"error"}``, a slot-wait timeout exit status 1,
otherwise ``cli.exit_code``).  Each try gets a fresh ``FACTORY_HOME`` and ``DAGSTER_HOME`` (``<home>/dagster``)
under a temporary directory (deleted at the end unless ``--keep``); every process's stdout/stderr is kept in
``OUT.logs/``.

Cases
-----
``reference``   one uninterrupted run on a fresh home: per raw partition row count and data version (the
                warehouse's ``partition_ledger``, opened read-only after the process ended, and ``count(*)`` of
                ``raw_events``), the feature views' ledger rows, the registry's versions (version, day, status,
                manifest sha256) and the served model (``aliases/champion.json``: version, sha256).  Its Dagster
                instance gives the phase timeline (step start/end) the signal times are drawn from.
``idempotent``  control: the same command again on the finished reference home (what any rerun below does
                anyway: ``factory run`` re-executes every day).  Shows what a rerun changes without a fault.
``kill``        ``--kills`` runs SIGKILLed at seeded random points spread over the phases ingest (raw_events),
                features (the daily views), training (training_window, candidate_model) and promotion
                (served_model): ingest/features at a time drawn from the reference's intervals of that phase;
                training at a delay after the log line ``daily_ingest <last day>: ok``; promotion at a delay
                after the log line ``candidate vN (<day>): promote``.  Where the process really was is read
                back from the Dagster instance (the run and step in progress at the signal) and from the log
                lines ``daily_ingest <day>: ok``.  Then the SAME command again, unaided, with a hard timeout of
                3x the reference's wall time: exit status 0?  recovery = its wall time; rows, data versions,
                registry and served sha256 identical to the reference?  did its ``recovered`` list name the
                killed run?  A rerun that fails gets one more try; failing that too, the home is *stuck*.
``term``        ``--terms`` runs sent SIGTERM the same way: exit within 20 s of the signal, with status 143, and
                exactly one JSON document on stdout with ``"stopped": "SIGTERM"``?  Then the rerun as above.
``concurrent``  (after the signals) ``--concurrent`` times: two runs started together on a fresh home: exactly one runs (exit 0),
                the other is refused (exit 2, a message naming the home on stderr, ``{"error"}`` on stdout); the
                instance is checked (``sqlite3``: ``alembic_version`` has exactly one row in runs.db, index.db
                and schedules.db; ``PRAGMA quick_check``), and a further run on the home must succeed (first
                repeat always; later repeats only when the winner did not complete or the instance looks bad:
                the winner's own 21 later runs already use the instance after the loser exited).
``flaky``       one whole run with ``Factory.fault_rate=0.3`` (the ``event_source`` resource's ``fault_rate`` /
                ``fault_seed``, added to every run's config by the child:
                ``cli.run`` has no parameter for it); raw_events retries transient source errors
                (``FETCH_RETRY``: 4 retries, exponential back-off 0.5 s .. 4 s).  Identical to the reference?
                How many transient failures, retries (Dagster's ``STEP_UP_FOR_RETRY`` events) and how many the
                injected pattern predicts (``sources.faults.failure_draw``).
``unwritable``  the home cannot be written: an existing root-owned 0o755 directory made immutable
                (``chattr +i``: root too is refused), a home under an immutable parent, an immutable
                DAGSTER_HOME, and (as root) the child run as user ``nobody`` against a root-owned 0o755 home
                when ``nobody`` can execute the venv's interpreter (skipped with the reason otherwise).
                Expected: exit status 2, one line on stderr naming the path, stdout exactly ``{"error": ...}``.
``dev``         (only with ``--dev``) ``factory dev`` (``dagster dev`` with its automation sensor) on the same
                home while a factory run runs (``FACTORY_SLOT_WAIT_S=120``): exit 0 or a clear slot-wait error,
                then ``dagster dev`` is stopped with SIGTERM, and a further run must complete (no stuck home).

Totals: ``stuck_homes``, ``corrupted_instances`` (a failed quick_check, an ``alembic_version`` table without
exactly one row, or runs left STARTED / slots still held after a successful rerun), ``differences`` (tries whose
stored state differs from the reference), ``wrong_exit_status``.  ``--quick``: 3 kills, 1 SIGTERM, 2
concurrent repeats (a smoke run).  The JSON is rewritten after every try (``"partial": true`` until the end).
Every process's result carries ``code`` (git HEAD + sha256 of ``factory_assets/**/*.py`` when it started): the
tree may change while the suite runs (``code_versions_seen`` counts the processes per version).
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

START, END = "2024-10-01", "2024-10-18"
WINDOW_DAYS = 15
TRAIN_DAYS = 7  # cli.TRAIN_LAST_DAYS
SIMULATOR = {"n_users": 400, "n_items": 120, "events_per_day": 3000.0, "seed": 11, "shift_date": "2024-11-11"}
CANDIDATE = {"model_kind": "blend"}
FAULT_RATE = 0.3
TERM_EXIT_S = 20.0
PHASES = ("ingest", "features", "training", "promotion")
STEP_PHASE = {"raw_events": "ingest", "user_item_daily": "features", "item_daily": "features",
              "user_features": "features", "item_features": "features", "online_features": "features",
              "behaviour_drift": "features", "training_window": "training", "candidate_model": "training",
              "shadow_evaluation": "training", "served_model": "promotion"}
ACTIVE = ("NOT_STARTED", "STARTING", "STARTED", "CANCELING", "QUEUED")
LOG_JOB = re.compile(r" factory (daily_ingest|daily_training) (\d{4}-\d{2}-\d{2}): (.*?)(?: \(run ([0-9a-f-]{36})\))?$")
PROMOTE = re.compile(r"candidate v\d+ \(\d{4}-\d{2}-\d{2}\): promote")


def days() -> list[date]:
    s, e = date.fromisoformat(START), date.fromisoformat(END)
    return [s + timedelta(days=i) for i in range((e - s).days + 1)]


def train_days() -> list[date]:
    ds = days()
    return [d for d in ds if d >= ds[0] + timedelta(days=WINDOW_DAYS - 1)][-TRAIN_DAYS:]


# =============================================================================================== child
def child(ns: argparse.Namespace) -> int:
    """``factory run --json`` on the small configuration, dispatched exactly as ``factory`` does."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", message=r".*is currently in (preview|beta).*")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from factory_assets import cli
    from factory_assets.platform import runguard, settings

    if ns.fault_rate:  # Factory.fault_rate / fault_seed: the event_source resource's config in every run's run config
        from dagster import JobDefinition

        original = JobDefinition.execute_in_process

        def with_faults(self, run_config=None, *a, **k):
            run_config = copy.deepcopy(run_config)
            resources = run_config["resources"]
            if "event_source" not in resources:
                raise RuntimeError(f"faults: no event_source resource in the run config of {self.name}: {sorted(resources)}")
            resources["event_source"]["config"].update(fault_rate=ns.fault_rate, fault_seed=ns.fault_seed)
            return original(self, run_config, *a, **k)

        JobDefinition.execute_in_process = with_faults
    args = argparse.Namespace(command="run", source="simulator", path=None, start=START, end=END,
                              backtest=False, home=ns.home, json=True, verbose=False)
    try:
        os.environ["FACTORY_SOURCE"] = "simulator"
        cli.check_settings()
        summary = cli.run(args, simulator=dict(SIMULATOR), candidate=dict(CANDIDATE))
    except settings.SettingsError as exc:
        return cli._refuse(f"factory: {exc}", True)
    except SystemExit as exc:
        if isinstance(exc.code, str):
            return cli._refuse(exc.code, True)
        raise
    except (runguard.SlotWaitTimeout, TimeoutError) as exc:
        cli._refuse(f"factory: {exc}", True)
        return 1
    cli._emit(summary, True)
    return cli.exit_code(summary)


# =============================================================================================== processes
def code_version() -> str:
    """``<git HEAD>+<sha256 of factory_assets/**/*.py>`` now: other people may edit the tree while the suite runs,
    and every child imports the code as it is when it starts."""
    import hashlib

    try:
        head = subprocess.run(["git", "-C", str(c.ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        head = "?"
    digest = hashlib.sha256()
    for path in sorted((c.ROOT / "factory_assets").rglob("*.py")):
        digest.update(str(path.relative_to(c.ROOT)).encode())
        digest.update(path.read_bytes())
    return f"{head}+{digest.hexdigest()[:10]}"


CODE_SEEN: dict[str, int] = {}


class Proc:
    """One child process; its stdout/stderr go to files under the log folder, stderr lines are timestamped."""

    def __init__(self, logs: Path, name: str, home: Path, extra: list[str] = (), env: dict | None = None,
                 user: str | None = None, dagster_home: Path | None = None, command: list[str] | None = None):
        self.name, self.home = name, home
        self.out_path, self.err_path = logs / f"{name}.out", logs / f"{name}.err"
        environment = {k: v for k, v in os.environ.items() if not k.startswith(("FACTORY_", "DAGSTER_"))}
        environment.update(FACTORY_HOME=str(home), DAGSTER_HOME=str(dagster_home or home / "dagster"),
                           FACTORY_WINDOW_DAYS=str(WINDOW_DAYS), FACTORY_SOURCE="simulator", OPENBLAS_NUM_THREADS="1",
                           PYTHONUNBUFFERED="1")
        environment.update(env or {})
        self.command = command or [c.PYTHON, str(Path(__file__).resolve()), "--child", "--home", str(home), *extra]
        self._out, self._err = open(self.out_path, "wb"), open(self.err_path, "wb")
        self.code = code_version()
        CODE_SEEN[self.code] = CODE_SEEN.get(self.code, 0) + 1
        self.started_epoch = time.time()
        self.started = time.monotonic()
        self.popen = subprocess.Popen(self.command, stdout=self._out, stderr=self._err, stdin=subprocess.DEVNULL,
                                      env=environment, cwd=str(c.ROOT), start_new_session=True, user=user)
        self.pid = self.popen.pid
        self.lines: list[tuple[float, str]] = []  # (seconds after start, stderr line) as first seen
        self._offset, self._partial = 0, b""
        self.ended: float | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def poll_log(self) -> list[tuple[float, str]]:
        new = []
        with open(self.err_path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        data = self._partial + data
        *complete, self._partial = data.split(b"\n")
        now = self.elapsed()
        for raw in complete:
            line = raw.decode(errors="replace")
            self.lines.append((now, line))
            new.append((now, line))
        return new

    def poll(self) -> int | None:
        rc = self.popen.poll()
        if rc is not None and self.ended is None:
            self.ended = self.elapsed()
        return rc

    def wait(self, timeout: float) -> tuple[int | None, bool]:
        """Wait up to ``timeout`` s (watching the log); on timeout SIGKILL it. Returns (rc, timed_out)."""
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                self.kill(signal.SIGKILL)
                self.popen.wait()
                self.poll()
                self.poll_log()
                return self.popen.returncode, True
            self.poll_log()
            time.sleep(0.05)
        self.poll_log()
        return self.popen.returncode, False

    def kill(self, signum: int) -> None:
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        self._out.close()
        self._err.close()

    def result(self, timed_out: bool = False) -> dict:
        self.close()
        stdout = self.out_path.read_text(errors="replace")
        stderr = self.err_path.read_text(errors="replace")
        docs, junk = parse_documents(stdout)
        rc = self.popen.returncode
        return {"name": self.name, "rc": rc, "signal": -rc if rc is not None and rc < 0 else None,
                "wall_s": round(self.ended if self.ended is not None else self.elapsed(), 2), "timed_out": timed_out,
                "stdout_documents": len(docs), "stdout_other": junk[:500], "summary": docs[0] if len(docs) == 1 else None,
                "stderr_tail": stderr[-2500:], "stderr_lines": stderr.count("\n"), "code": self.code,
                "log": {"stdout": str(self.out_path), "stderr": str(self.err_path)}}


def parse_documents(text: str) -> tuple[list, str]:
    """The JSON documents on a stdout, in order, and whatever else was there."""
    docs, junk, i = [], "", 0
    decoder = json.JSONDecoder()
    while i < len(text):
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            break
        try:
            doc, end = decoder.raw_decode(text, i)
            docs.append(doc)
            i = end
        except ValueError:
            nl = text.find("\n", i)
            junk += text[i: len(text) if nl < 0 else nl + 1]
            i = len(text) if nl < 0 else nl + 1
    return docs, junk


def log_position(lines: list[tuple[float, str]], until: float | None = None) -> dict:
    """From the log lines ``factory daily_ingest <day>: ...`` seen so far: the last job done and the one running."""
    done = []
    for t, line in lines:
        if until is not None and t > until:
            break
        m = LOG_JOB.search(line)
        if m:
            done.append((m.group(1), m.group(2), m.group(3)))
    ingest_done = [d for j, d, _ in done if j == "daily_ingest"]
    training_done = [d for j, d, _ in done if j == "daily_training"]
    running = None
    if len(ingest_done) < len(days()):
        running = f"daily_ingest {days()[len(ingest_done)]}"
    elif len(training_done) < len(train_days()):
        running = f"daily_training {train_days()[len(training_done)]}"
    return {"last_done": " ".join(done[-1][:2]) + f": {done[-1][2]}" if done else None,
            "ingest_done": len(ingest_done), "training_done": len(training_done), "running_per_log": running}


# =============================================================================================== the stored state
def snapshot(home: Path) -> dict:
    """The warehouse's ledger (raw and feature views), raw row counts, the registry (its own store) and the
    champion."""
    import duckdb

    from factory_assets.data import warehouse

    out: dict = {"raw": {}, "features": {}, "registry": [], "champion": None, "error": None}
    path = home / "simulator" / "warehouse.duckdb"
    try:
        con = duckdb.connect(str(path), read_only=True)
    except Exception as exc:  # noqa: BLE001
        out["error"] = f"{type(exc).__name__}: {exc}"
        return out
    try:
        s, e = date.fromisoformat(START), date.fromisoformat(END)
        counts = dict(con.execute(f"SELECT partition_day, count(*) FROM {warehouse.RAW_EVENTS} GROUP BY 1").fetchall())
        assets = [a for (a,) in con.execute(f"SELECT DISTINCT asset FROM {warehouse.LEDGER} ORDER BY 1").fetchall()]
        for asset in assets:
            frame = warehouse.ledger(con, asset, s, e)
            rows = {r.partition_day.isoformat(): {"rows": int(r.row_count), "data_version": r.data_version}
                    for r in frame.itertuples()}
            if asset == warehouse.RAW_EVENTS:
                for day, row in rows.items():
                    row["table_rows"] = int(counts.get(date.fromisoformat(day), 0))
                out["raw"] = rows
            else:
                out["features"][asset] = rows
    except Exception as exc:  # noqa: BLE001
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        con.close()
    out["registry"], registry_error = registry_versions(home)
    if registry_error and not out["error"]:
        out["error"] = registry_error
    alias = home / "simulator" / "aliases" / "champion.json"
    if alias.exists():
        pointer = json.loads(alias.read_text())
        out["champion"] = {k: pointer.get(k) for k in ("version", "sha256", "partition_day")}
    return out


def registry_versions(home: Path) -> tuple[list[dict], str | None]:
    """The model registry's versions (its own SQLite store, ``<home>/simulator/registry.db``, read-only; no file
    yet = no versions) and an error text when it cannot be read."""
    from factory_assets.ml import registry

    path = home / "simulator" / registry.REGISTRY_FILE
    if not path.exists():
        return [], None
    try:
        with _ro(path) as con:
            rows = con.execute(f"SELECT version, partition_day, status, manifest_sha256 FROM {registry.VERSIONS} "
                               "ORDER BY version").fetchall()
    except sqlite3.Error as exc:
        if "no such table" in str(exc):
            return [], None
        return [], f"registry unreadable: {type(exc).__name__}: {exc}"
    return [{"version": int(v), "partition_day": str(d)[:10], "status": st, "manifest_sha256": sha}
            for v, d, st, sha in rows], None


def compare(ref: dict, got: dict) -> dict:
    """Differences of ``got`` from the reference, by kind: data (raw + features), registry, served."""
    diffs = {"data": [], "registry": [], "served": []}
    if got.get("error"):
        diffs["data"].append(f"warehouse unreadable: {got['error']}")
        return diffs
    for day in sorted(set(ref["raw"]) | set(got["raw"])):
        a, b = ref["raw"].get(day), got["raw"].get(day)
        if a != b:
            diffs["data"].append(f"raw_events {day}: {a} != {b}")
    for view in sorted(set(ref["features"]) | set(got["features"])):
        ra, rb = ref["features"].get(view, {}), got["features"].get(view, {})
        for day in sorted(set(ra) | set(rb)):
            if ra.get(day) != rb.get(day):
                diffs["data"].append(f"{view} {day}: {ra.get(day)} != {rb.get(day)}")
    if ref["registry"] != got["registry"]:
        diffs["registry"].append(f"registry versions {[(v['version'], v['partition_day'], v['status'], v['manifest_sha256'][:12]) for v in ref['registry']]}"
                                 f" != {[(v['version'], v['partition_day'], v['status'], (v['manifest_sha256'] or '')[:12]) for v in got['registry']]}")
    ra, rb = ref.get("champion") or {}, got.get("champion") or {}
    if ra.get("sha256") != rb.get("sha256"):
        diffs["served"].append(f"served sha256 {ra.get('sha256')} != {rb.get('sha256')}")
    if ra.get("version") != rb.get("version"):
        diffs["served"].append(f"served version {ra.get('version')} != {rb.get('version')}")
    return diffs


def _ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)


def _utc(text: str | None) -> float | None:
    if text is None:
        return None
    return datetime.fromisoformat(str(text)).replace(tzinfo=timezone.utc).timestamp()


def instance_health(dagster_home: Path) -> dict:
    """sqlite3 checks of a Dagster instance: alembic_version rows, quick_check, runs left active, slots held."""
    hist = dagster_home / "history"
    out: dict = {"alembic_rows": {}, "quick_check": {}, "active_runs": [], "held_slots": [], "pending_steps": 0,
                 "runs": {}, "problems": []}
    for name, path in (("runs.db", hist / "runs.db"), ("index.db", hist / "runs" / "index.db"),
                       ("schedules.db", dagster_home / "schedules" / "schedules.db")):
        if not path.exists():
            out["problems"].append(f"{name} missing")
            continue
        try:
            with _ro(path) as con:
                n = con.execute("SELECT count(*) FROM alembic_version").fetchone()[0]
                out["alembic_rows"][name] = n
                if n != 1:
                    out["problems"].append(f"{name}: alembic_version has {n} rows")
                check = con.execute("PRAGMA quick_check").fetchone()[0]
                out["quick_check"][name] = check
                if check != "ok":
                    out["problems"].append(f"{name}: quick_check {check}")
        except sqlite3.Error as exc:
            out["problems"].append(f"{name}: {exc}")
    bad_run_dbs = []
    for path in sorted((hist / "runs").glob("*.db")) if (hist / "runs").exists() else []:
        if path.name == "index.db":
            continue
        try:
            with _ro(path) as con:
                if con.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                    bad_run_dbs.append(path.name)
        except sqlite3.Error as exc:
            bad_run_dbs.append(f"{path.name}: {exc}")
    if bad_run_dbs:
        out["problems"].append(f"run event logs failing quick_check: {bad_run_dbs}")
    try:
        with _ro(hist / "runs.db") as con:
            for status, n in con.execute("SELECT status, count(*) FROM runs GROUP BY 1").fetchall():
                out["runs"][status] = n
            out["active_runs"] = [{"run_id": r, "job": j, "status": s} for r, j, s in con.execute(
                f"SELECT run_id, pipeline_name, status FROM runs WHERE status IN ({','.join('?' * len(ACTIVE))})", ACTIVE)]
        with _ro(hist / "runs" / "index.db") as con:
            out["held_slots"] = [{"pool": k, "run_id": r, "step": s} for k, r, s in con.execute(
                "SELECT concurrency_key, run_id, step_key FROM concurrency_slots WHERE run_id IS NOT NULL")]
            out["pending_steps"] = con.execute("SELECT count(*) FROM pending_steps").fetchone()[0]
    except sqlite3.Error as exc:
        out["problems"].append(f"runs: {exc}")
    return out


def run_timeline(dagster_home: Path) -> list[dict]:
    """Every run of the instance: job, partition, status, [create, end] (epoch) and its steps' [start, end]."""
    hist = dagster_home / "history"
    runs = []
    with _ro(hist / "runs.db") as con:
        rows = con.execute("SELECT run_id, pipeline_name, status, create_timestamp, end_time FROM runs").fetchall()
        tags = {(r, k): v for r, k, v in con.execute("SELECT run_id, key, value FROM run_tags WHERE key = 'dagster/partition'")}
    for run_id, job, status, created, ended in rows:
        steps: dict[str, dict] = {}
        path = hist / "runs" / f"{run_id}.db"
        if path.exists():
            with _ro(path) as con:
                for kind, step, ts in con.execute(
                        "SELECT dagster_event_type, step_key, timestamp FROM event_logs WHERE step_key IS NOT NULL AND "
                        "dagster_event_type IN ('STEP_START', 'STEP_SUCCESS', 'STEP_FAILURE', 'STEP_UP_FOR_RETRY', "
                        "'STEP_RESTARTED') ORDER BY id"):
                    s = steps.setdefault(step, {"start": None, "end": None, "events": []})
                    s["events"].append(kind)
                    if kind in ("STEP_START", "STEP_RESTARTED") and s["start"] is None:
                        s["start"] = _utc(ts)
                    if kind in ("STEP_SUCCESS", "STEP_FAILURE"):
                        s["end"] = _utc(ts)
        runs.append({"run_id": run_id, "job": job, "status": status, "partition": tags.get((run_id, "dagster/partition")),
                     "start": _utc(created), "end": ended, "steps": steps})
    return sorted(runs, key=lambda r: r["start"])


def _phase_in_run(run: dict, t: float) -> tuple[str, str | None]:
    current = None
    for step, s in run["steps"].items():
        if s["start"] is not None and s["start"] <= t and (s["end"] is None or s["end"] >= t):
            current = step
    if current:
        base = current.split("_checks")[0]
        phase = STEP_PHASE.get(base) or STEP_PHASE.get(re.sub(r"_[a-z_]+$", "", base))
        if phase is None:
            phase = next((p for k, p in STEP_PHASE.items() if current.startswith(k)), None)
        return phase or ("features" if run["job"] == "daily_ingest" else "training"), current
    if run["job"] == "daily_ingest":
        raw = run["steps"].get("raw_events", {})
        return ("features" if raw.get("end") is not None and raw["end"] <= t else "ingest"), None
    served = run["steps"].get("served_model", {})
    return ("promotion" if served.get("start") is not None and served["start"] <= t else "training"), None


def phase_at(dagster_home: Path, t: float) -> dict:
    """Where a process was at epoch ``t``: the run in progress (job, partition, step) and its phase."""
    try:
        runs = run_timeline(dagster_home)
    except (sqlite3.Error, OSError) as exc:
        return {"phase": "unknown", "error": str(exc)}
    if not runs:
        return {"phase": "startup", "run_id": None}
    for run in runs:
        end = run["end"] if run["end"] is not None else float("inf")
        if run["start"] <= t <= end:
            phase, step = _phase_in_run(run, t)
            return {"phase": phase, "run_id": run["run_id"], "job": run["job"], "partition": run["partition"],
                    "step": step, "run_status_after": run["status"]}
    if t < runs[0]["start"]:
        return {"phase": "startup", "run_id": None}
    if all((r["end"] or 0) < t for r in runs) and len(runs) == len(days()) + len(train_days()):
        return {"phase": "after the last run", "run_id": None}
    return {"phase": "between runs", "run_id": None}


def phase_intervals(proc: Proc, dagster_home: Path) -> dict:
    """The reference's phases as [start, end] seconds after its process started."""
    spans = {p: [] for p in PHASES}
    t0 = proc.started_epoch
    for run in run_timeline(dagster_home):
        end = (run["end"] or run["start"]) - t0
        start = run["start"] - t0
        if run["job"] == "daily_ingest":
            raw_end = (run["steps"].get("raw_events", {}).get("end") or run["start"]) - t0
            spans["ingest"].append([start, raw_end])
            spans["features"].append([raw_end, end])
        else:
            served = run["steps"].get("served_model", {}).get("start")
            if served:
                spans["training"].append([start, served - t0])
                spans["promotion"].append([served - t0, end])
            else:
                spans["training"].append([start, end])
    return spans


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def line_time(proc: Proc, pattern: re.Pattern) -> float | None:
    return next((t for t, line in proc.lines if pattern.search(line)), None)


# =============================================================================================== planning signals
def plan_signals(rng: random.Random, n: int, ref: dict, lines: list[tuple[float, str]]) -> list[dict]:
    """``n`` signal points, phases in turn (ingest, features, training, promotion, ingest, ...).

    Each point is a delay after a log line of the reference (``lines``: (seconds after start, line)), so that a
    slower or faster machine still hits about the same place: ingest/features of day k after the line
    ``daily_ingest <day k-1>: ok`` (day 0: after the process start), training after ``daily_ingest <last day>:
    ok``, promotion after ``candidate vN (<day>): promote``.  The time is drawn uniformly from the reference's
    intervals of that phase (``ref["phases"]``) of the chosen run.
    """
    spans, wall = ref["phases"], ref["wall_s"]

    def anchor(pattern: str | None) -> float | None:
        if pattern is None:
            return 0.0
        return next((t for t, line in lines if re.search(pattern, line)), None)

    plans = []
    for i in range(n):
        phase = PHASES[i % len(PHASES)]
        intervals = [s for s in spans[phase] if s[1] > s[0]]
        if phase in ("ingest", "features"):
            k = rng.randrange(len(spans[phase]))
            a, b = spans[phase][k]
            t = rng.uniform(a, b)
            pattern = None if k == 0 else rf" factory daily_ingest {days()[k - 1]}: ok"
        elif phase == "training" or not intervals:
            pattern = rf" factory daily_ingest {END}: ok"
            total = sum(b - a for a, b in spans["training"])
            x = rng.uniform(0, total)
            t = spans["training"][-1][1]
            for a, b in spans["training"]:
                if x <= b - a:
                    t = a + x
                    break
                x -= b - a
        else:
            pattern = PROMOTE.pattern
            a, b = intervals[0]
            t = rng.uniform(a, b)
        t0 = anchor(pattern)
        if t0 is None:  # the line never came in the reference: a time after the start
            pattern, t0 = None, 0.0
        plans.append({"target_phase": phase, "trigger": pattern, "delay_s": round(max(t - t0, 0.0), 2),
                      "fraction": round(t / wall, 3)})
    return plans




# =============================================================================================== the suite
class Suite:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.tmp = Path(args.tmp or tempfile.mkdtemp(prefix="factory-faults-"))
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.logs = Path(args.json + ".logs") if args.json else self.tmp / "logs"
        if self.logs.exists():
            shutil.rmtree(self.logs)
        self.logs.mkdir(parents=True)
        self.started = time.perf_counter()
        self.rng = random.Random(args.seed)
        self.cases: dict[str, dict] = {}
        self.ref: dict | None = None
        self.ref_lines: list[tuple[float, str]] = []
        self.immutable: list[Path] = []

    # ------------------------------------------------------------------ helpers
    def home(self, name: str) -> Path:
        path = self.tmp / name / "home"
        if path.parent.exists():
            shutil.rmtree(path.parent)
        path.parent.mkdir(parents=True)
        return path

    def timeout(self) -> float:
        return max(3 * self.ref["wall_s"], 180.0)

    def save(self, partial: bool = True) -> None:
        if self.args.json:
            Path(self.args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(self.args.json).write_text(json.dumps(self.document(partial), indent=2, default=str))

    def say(self, text: str) -> None:
        print(f"[{time.perf_counter() - self.started:7.1f} s] {text}", flush=True)

    def run_once(self, name: str, home: Path, extra: list[str] = (), timeout: float | None = None, **kw) -> dict:
        proc = Proc(self.logs, name, home, extra, **kw)
        rc, timed_out = proc.wait(timeout or self.timeout())
        res = proc.result(timed_out)
        res["log_position"] = log_position(proc.lines)
        return res

    # ------------------------------------------------------------------ 1. reference
    def reference(self) -> None:
        home = self.home("reference")
        self.say("reference: one uninterrupted run")
        proc = Proc(self.logs, "reference", home)
        rc, timed_out = proc.wait(3600)
        res = proc.result(timed_out)
        if rc != 0:
            raise RuntimeError(f"the reference run failed (exit {rc}):\n{res['stderr_tail']}")
        snap = snapshot(home)
        phases = phase_intervals(proc, home / "dagster")
        end_s = max(b for spans in phases.values() for a, b in spans)
        self.ref_lines = list(proc.lines)
        trig = {"training": line_time(proc, re.compile(rf" factory daily_ingest {END}: ok")), "promotion": line_time(proc, PROMOTE)}
        summary = res["summary"] or {}
        self.ref = {"wall_s": res["wall_s"], "rc": rc, "snapshot": snap, "phases": phases, "end_s": end_s,
                    "trigger_s": trig, "home": str(home),
                    "phase_seconds": {p: round(sum(b - a for a, b in s), 2) for p, s in phases.items()},
                    "first_run_s": round(min(a for s in phases.values() for a, b in s), 2),
                    "served_model": summary.get("served_model"), "registry": summary.get("registry"),
                    "trained": [{k: t.get(k) for k in ("partition", "version", "verdict")} for t in summary.get("trained", [])],
                    "health": instance_health(home / "dagster"), "run": {k: v for k, v in res.items() if k != "summary"}}
        if trig["promotion"] is None:
            self.say("note: no candidate was promoted in the reference: promotion signals fall back to training")
        self.say(f"reference: {res['wall_s']} s, exit {rc}, served v{(snap['champion'] or {}).get('version')} "
                 f"{((snap['champion'] or {}).get('sha256') or '')[:12]}, {len(snap['registry'])} registry versions, "
                 f"phases (s) {self.ref['phase_seconds']}")
        self.save()

    # ------------------------------------------------------------------ control: rerun a finished home
    def idempotent(self) -> None:
        home = Path(self.ref["home"])
        self.say("idempotent: the same command again on the finished reference home")
        res = self.run_once("idempotent", home)
        snap = snapshot(home)
        diffs = compare(self.ref["snapshot"], snap)
        health = instance_health(home / "dagster")
        try_ = {"rc": res["rc"], "wall_s": res["wall_s"], "completed": res["rc"] == 0 and not res["timed_out"],
                "differences": diffs, "identical": not any(diffs.values()), "health": health,
                "registry_after": snap["registry"], "champion_after": snap["champion"], "run": res}
        self.cases["idempotent"] = {"tries": [try_]}
        self.say(f"idempotent: exit {res['rc']} in {res['wall_s']} s; identical: {try_['identical']} {self._short(diffs)}")
        self.save()

    @staticmethod
    def _short(diffs: dict) -> str:
        parts = [f"{k}: {len(v)} ({v[0][:160]})" for k, v in diffs.items() if v]
        return "; ".join(parts)

    # ------------------------------------------------------------------ 2./3. signals, then the rerun
    def signal_try(self, case: str, i: int, plan: dict, signum: int) -> dict:
        home = self.home(f"{case}-{i:02d}")
        dh = home / "dagster"
        proc = Proc(self.logs, f"{case}-{i:02d}-faulted", home)
        pattern = re.compile(plan["trigger"]) if plan.get("trigger") else None
        fire_at = None if pattern is not None else plan["delay_s"]
        finished_first = False
        while True:
            if proc.poll() is not None:
                finished_first = True
                break
            for t, line in proc.poll_log():
                if pattern is not None and fire_at is None and pattern.search(line):
                    fire_at = t + plan["delay_s"]
            if fire_at is not None and proc.elapsed() >= fire_at:
                break
            if proc.elapsed() > self.timeout():
                break
            time.sleep(0.02)
        out = {"case": case, "try": i, "plan": plan, "signal": signal.Signals(signum).name, "home": str(home)}
        if finished_first:
            res = proc.result()
            out.update(signalled=False, note="the run ended before the signal point", faulted_run=res)
            sent_at_s = None
        else:
            sent_epoch = time.time()
            sent_at_s = proc.elapsed()
            proc.kill(signum)
            out["signalled"] = True
            out["sent_at_s"] = round(sent_at_s, 2)
            out["sent_fraction_of_reference"] = round(sent_at_s / self.ref["wall_s"], 3)
            out["log_at_signal"] = log_position(proc.lines)
            if signum == signal.SIGKILL:
                proc.popen.wait()
                proc.poll()
                res = proc.result()
            else:
                rc, late = proc.wait(TERM_EXIT_S)  # SIGKILLs it when it is still alive after 20 s
                res = proc.result(late)
                exit_s = (proc.ended or proc.elapsed()) - sent_at_s
                summary = res["summary"]
                out["term"] = {
                    "exit_s_after_signal": round(exit_s, 2), "exited_within_20s": not late,
                    "rc": res["rc"], "rc_is_143": res["rc"] == 143, "stdout_documents": res["stdout_documents"],
                    "stopped": (summary or {}).get("stopped"),
                    "one_summary_stopped_sigterm": res["stdout_documents"] == 1 and (summary or {}).get("stopped") == "SIGTERM",
                    "forced_exit": "did not stop within" in proc.err_path.read_text(errors="replace"),
                    "last_run_row": (summary or {}).get("runs", [None])[-1] if (summary or {}).get("runs") else None,
                }
                out["term"]["ok"] = out["term"]["exited_within_20s"] and out["term"]["rc_is_143"] and out["term"]["one_summary_stopped_sigterm"]
            out["faulted_run"] = {k: v for k, v in res.items() if k != "summary"}
            out["where"] = phase_at(dh, sent_epoch)
            out["after_signal"] = instance_health(dh) if dh.exists() else None
        # the same command again, unaided
        rerun = self.run_once(f"{case}-{i:02d}-rerun", home)
        out["rerun"] = {k: v for k, v in rerun.items() if k != "summary"}
        out["completed_unaided"] = rerun["rc"] == 0 and not rerun["timed_out"]
        out["recovery_s"] = rerun["wall_s"] if out["completed_unaided"] else None
        recovered = (rerun["summary"] or {}).get("recovered") or []
        out["recovered"] = recovered
        dead = (out.get("where") or {}).get("run_id")
        status = (out.get("where") or {}).get("run_status_after")
        out["interrupted_run_status_before_rerun"] = status
        if out.get("signalled") and dead and status in ACTIVE:  # left active: the rerun must reap it
            out["recovered_names_dead_run"] = any(r.get("run_id") == dead for r in recovered)
        else:  # no run in progress, or it was finished (SIGTERM: CANCELED) before the process ended
            out["recovered_names_dead_run"] = None
        if not out["completed_unaided"]:
            second = self.run_once(f"{case}-{i:02d}-rerun2", home)
            out["second_rerun"] = {k: v for k, v in second.items() if k != "summary"}
            out["stuck"] = not (second["rc"] == 0 and not second["timed_out"])
        else:
            out["stuck"] = False
        out["health"] = instance_health(dh)
        out["leftovers"] = bool(out["health"]["active_runs"] or out["health"]["held_slots"] or out["health"]["pending_steps"])
        out["corrupted"] = bool(out["health"]["problems"])
        snap = snapshot(home)
        out["differences"] = compare(self.ref["snapshot"], snap)
        out["identical"] = not any(out["differences"].values())
        out["registry_after"], out["champion_after"] = snap["registry"], snap["champion"]
        return out

    def report_signal(self, case: str, i: int, n: int, plan: dict, t: dict) -> None:
        where = t.get("where") or {}
        extra = ""
        if "term" in t:
            tm = t["term"]
            extra = f"; exit {tm['rc']} {tm['exit_s_after_signal']} s after, stopped={tm['stopped']}, docs={tm['stdout_documents']}"
        self.say(f"{case} {i + 1}/{n}: aimed {plan['target_phase']}, hit {where.get('phase', '-')} "
                 f"({where.get('job', '')} {where.get('partition', '') or ''} {where.get('step') or ''}) at "
                 f"{t.get('sent_at_s')} s{extra}; rerun exit {t['rerun']['rc']} in {t['rerun']['wall_s']} s, "
                 f"recovered named dead run: {t['recovered_names_dead_run']}; identical: {t['identical']} "
                 f"{self._short(t['differences'])}{'; STUCK' if t['stuck'] else ''}"
                 f"{'; CORRUPTED ' + str(t['health']['problems']) if t['corrupted'] else ''}"
                 f"{'; leftovers' if t['leftovers'] else ''}")

    # ------------------------------------------------------------------ 4. two at once
    def concurrent(self, repeats: int) -> None:
        tries = self.cases.setdefault("concurrent", {"tries": []})["tries"]
        for i in range(repeats):
            home = self.home(f"concurrent-{i:02d}")
            a = Proc(self.logs, f"concurrent-{i:02d}-a", home)
            b = Proc(self.logs, f"concurrent-{i:02d}-b", home)
            deadline = time.monotonic() + self.timeout()
            while (a.poll() is None or b.poll() is None) and time.monotonic() < deadline:
                a.poll_log()
                b.poll_log()
                time.sleep(0.05)
            timed_out = False
            for p in (a, b):
                if p.poll() is None:
                    p.kill(signal.SIGKILL)
                    p.popen.wait()
                    p.poll()
                    timed_out = True
            ra, rb = a.result(timed_out), b.result(timed_out)
            rcs = sorted([ra["rc"], rb["rc"]])
            winner, loser = (ra, rb) if ra["rc"] == 0 else (rb, ra)
            loser_doc = loser["summary"]
            loser_err = [ln for ln in loser["stderr_tail"].splitlines() if ln.strip()]
            out = {"try": i, "home": str(home), "rcs": [ra["rc"], rb["rc"]], "exactly_one_ran": rcs == [0, 2],
                   "loser_rc": loser["rc"], "loser_message": loser_err[-1] if loser_err else None,
                   "loser_names_home": str(home) in (loser["stderr_tail"] or ""),
                   "loser_stdout_error_only": isinstance(loser_doc, dict) and list(loser_doc) == ["error"] and str(home) in loser_doc["error"],
                   "loser_stderr_lines": len(loser_err), "winner_wall_s": winner["wall_s"],
                   "runs": [{k: v for k, v in r.items() if k != "summary"} for r in (ra, rb)]}
            out["health"] = instance_health(home / "dagster")
            out["corrupted"] = bool(out["health"]["problems"])
            if i == 0 or not out["exactly_one_ran"] or out["corrupted"]:
                further = self.run_once(f"concurrent-{i:02d}-further", home)
                out["further_run"] = {k: v for k, v in further.items() if k != "summary"}
                out["further_ok"] = further["rc"] == 0 and not further["timed_out"]
                out["health_after_further"] = instance_health(home / "dagster")
                out["corrupted"] = out["corrupted"] or bool(out["health_after_further"]["problems"])
            else:
                out["further_ok"] = None
            out["completed_unaided"] = winner["rc"] == 0 and out["further_ok"] is not False
            out["stuck"] = out["further_ok"] is False
            snap = snapshot(home)
            out["differences"] = compare(self.ref["snapshot"], snap)
            out["identical"] = not any(out["differences"].values())
            out["ok"] = out["exactly_one_ran"] and out["loser_names_home"] and out["loser_stdout_error_only"] and not out["corrupted"]
            tries.append(out)
            self.say(f"concurrent {i + 1}/{repeats}: exits {out['rcs']}, loser: {out['loser_message']!r}; "
                     f"alembic rows {out['health']['alembic_rows']}; further run ok: {out['further_ok']}; "
                     f"identical: {out['identical']} {self._short(out['differences'])}")
            self.save()
            self.cleanup_home(home)

    # ------------------------------------------------------------------ 5. flaky source
    @staticmethod
    def predicted_failures(seed: int) -> dict[str, int]:
        """Injected failures per day that FlakySource's pattern gives for ``seed`` (5 = all 5 attempts fail)."""
        from factory_assets.data.sources.faults import failure_draw

        out = {}
        for d in days():  # FlakySource counts attempts per day: failures until the first good draw
            k = 0
            while k < 5 and failure_draw(seed, d, k) < FAULT_RATE:
                k += 1
            out[d.isoformat()] = k
        return out

    def flaky(self) -> None:
        """fault_rate 0.3 with a fault seed whose pattern the retry policy absorbs (exit 0, identical expected), and
        one whose pattern fails a day 5 times in a row (exit 1 naming the day expected; then the same command
        with the source healed must complete and be identical)."""
        seeds = {}
        for seed in range(self.args.seed, self.args.seed + 10_000):
            exhausted = any(k >= 5 for k in self.predicted_failures(seed).values())
            key = "exhausted" if exhausted else "absorbed"
            seeds.setdefault(key, seed)
            if len(seeds) == 2:
                break
        tries = []
        for kind in ("absorbed", "exhausted"):
            seed = seeds[kind]
            predicted = self.predicted_failures(seed)
            bad_days = [d for d, k in predicted.items() if k >= 5]
            home = self.home(f"flaky-{kind}")
            self.say(f"flaky ({kind}): one run with fault_rate {FAULT_RATE}, fault_seed {seed}")
            res = self.run_once(f"flaky-{kind}", home, ["--fault-rate", str(FAULT_RATE), "--fault-seed", str(seed)])
            err = Path(res["log"]["stderr"]).read_text(errors="replace")
            logged = len(re.findall(r"transient source failure on attempt", err))
            retries = 0
            try:
                for run in run_timeline(home / "dagster"):
                    retries += sum(s["events"].count("STEP_UP_FOR_RETRY") for s in run["steps"].values())
            except (sqlite3.Error, OSError):
                pass
            summary = res["summary"] or {}
            failed = [r for r in summary.get("runs", []) if r.get("outcome") == "error"]
            out = {"try": kind, "fault_seed": seed, "rc": res["rc"], "wall_s": res["wall_s"],
                   "transient_failures_logged": logged, "retries_in_instance": retries,
                   # up to the first day that fails 5 times (the run stops there)
                   "predicted_failures": sum(min(k, 5) for d, k in predicted.items() if not bad_days or d <= bad_days[0]),
                   "predicted_by_day": predicted, "days_exhausting_retries_predicted": bad_days,
                   "failed_runs": failed, "run": {k: v for k, v in res.items() if k != "summary"},
                   "retry_policy": "raw_events: RetryPolicy(max_retries=4, delay=0.5, backoff=EXPONENTIAL, jitter=PLUS_MINUS)"}
            if kind == "absorbed":
                out["expected"] = "exit 0, every transient failure retried, state identical to the reference"
                out["ok"] = res["rc"] == 0 and not failed and logged == out["predicted_failures"]
                out["completed"] = res["rc"] == 0 and not res["timed_out"]
            else:
                first = bad_days[0] if bad_days else None
                out["expected"] = (f"exit 1: daily_ingest {first} fails after 5 attempts and stops the run; then the "
                                   "same command with the source healed (no fault injection) completes, identical")
                out["ok"] = res["rc"] == 1 and len(failed) == 1 and failed[0]["partition"] == first \
                    and failed[0]["job"] == "daily_ingest" and len(summary.get("runs", [])) == days().index(date.fromisoformat(first)) + 1
                healed = self.run_once(f"flaky-{kind}-healed", home)
                out["healed_rerun"] = {k: v for k, v in healed.items() if k != "summary"}
                out["completed"] = healed["rc"] == 0 and not healed["timed_out"]
                out["stuck"] = not out["completed"]
                out["recovery_s"] = healed["wall_s"] if out["completed"] else None
            snap = snapshot(home)
            out["differences"] = compare(self.ref["snapshot"], snap)
            out["identical"] = not any(out["differences"].values())
            out["health"] = instance_health(home / "dagster")
            out["corrupted"] = bool(out["health"]["problems"])
            tries.append(out)
            self.say(f"flaky ({kind}): exit {res['rc']} in {res['wall_s']} s; {logged} transient failures logged, "
                     f"{retries} retries, {out['predicted_failures']} predicted (days failing 5 times: {bad_days}); "
                     f"failed runs {[(r['job'], r['partition']) for r in failed]}"
                     + (f"; healed rerun exit {out['healed_rerun']['rc']} in {out['healed_rerun']['wall_s']} s" if "healed_rerun" in out else "")
                     + f"; identical: {out['identical']} {self._short(out['differences'])}")
            self.cases["flaky"] = {"tries": tries}
            self.save()
            self.cleanup_home(home)

    # ------------------------------------------------------------------ 6. unwritable home
    def unwritable(self) -> None:
        tries = []
        base = self.tmp / "unwritable"
        if base.exists():
            self._unfreeze(base)
            shutil.rmtree(base)
        base.mkdir(parents=True)

        def check(name, res, path_expected, created_check=None):
            docs_ok = isinstance(res["summary"], dict) and list(res["summary"]) == ["error"] and res["stdout_documents"] == 1 \
                and not res["stdout_other"].strip()
            lines = [ln for ln in Path(res["log"]["stderr"]).read_text(errors="replace").splitlines() if ln.strip()]
            out = {"variant": name, "rc": res["rc"], "rc_is_2": res["rc"] == 2, "stderr_lines": len(lines),
                   "stderr": lines[-3:], "one_stderr_line": len(lines) == 1,
                   "names_path": any(str(path_expected) in ln for ln in lines),
                   "stdout_error_only": docs_ok, "stdout": res["summary"], "wall_s": res["wall_s"]}
            out["ok"] = out["rc_is_2"] and out["one_stderr_line"] and out["names_path"] and out["stdout_error_only"]
            tries.append(out)
            self.say(f"unwritable {name}: exit {res['rc']}, {len(lines)} stderr line(s): {lines[-1][:200] if lines else ''!r}; "
                     f"stdout error only: {docs_ok}")

        # a) an existing, root-owned 0o755 home that nobody may write (immutable: root is refused too)
        home = base / "immutable-home"
        home.mkdir(mode=0o755)
        if self._freeze(home):
            check("existing home, chattr +i (as root)", self.run_once("unwritable-immutable-home", home, timeout=300), home)
        # b) a home that does not exist yet, under an immutable parent
        parent = base / "immutable-parent"
        parent.mkdir(mode=0o755)
        if self._freeze(parent):
            check("home under an immutable parent", self.run_once("unwritable-under-immutable", parent / "home", timeout=300),
                  parent / "home")
        # c) a writable home, an immutable DAGSTER_HOME
        home_c = base / "writable-home"
        dh = base / "immutable-dagster-home"
        dh.mkdir(mode=0o755)
        if self._freeze(dh):
            check("immutable DAGSTER_HOME", self.run_once("unwritable-dagster-home", home_c, timeout=300, dagster_home=dh), dh)
        # d) as nobody: a root-owned 0o755 home
        if os.geteuid() == 0:
            home_d = base / "root-owned-home"
            home_d.mkdir(mode=0o755)
            os.chmod(base, 0o755)
            os.chmod(self.tmp, 0o755)
            runner = self._nobody_python()
            if runner is not None:
                python, env, how = runner
                nobody_home = base / "nobody-HOME"
                nobody_home.mkdir(mode=0o777)
                os.chmod(nobody_home, 0o777)
                check("root-owned 0o755 home, child as nobody",
                      self.run_once("unwritable-nobody", home_d, timeout=300, user="nobody",
                                    env={**env, "HOME": str(nobody_home)},
                                    command=[python, str(Path(__file__).resolve()), "--child", "--home", str(home_d)]),
                      home_d)
                tries[-1]["interpreter"] = how
            else:
                tries.append({"variant": "root-owned 0o755 home, child as nobody", "skipped": True,
                              "reason": f"user nobody can run neither {c.PYTHON} nor a system python3 with the venv's packages"})
                self.say(f"unwritable as nobody: skipped ({tries[-1]['reason']})")
        self._unfreeze(base)
        self.cases["unwritable"] = {"tries": tries}
        self.save()

    @staticmethod
    def _nobody_python() -> tuple[str, dict, str] | None:
        """An interpreter user ``nobody`` can run the factory with: the venv's, else the system python3 of the
        same minor version with the venv's site-packages and the repository on PYTHONPATH (the venv's base
        interpreter may live under a 0o700 /root)."""
        probe = "import factory_assets.cli, dagster, duckdb"
        site_packages = next(Path(c.PYTHON).parent.parent.glob("lib/python3*/site-packages"), None)
        minor = f"python{sys.version_info.major}.{sys.version_info.minor}"
        candidates = [(c.PYTHON, {}, f"{c.PYTHON} (the venv's)")]
        if site_packages is not None:
            for system in (f"/usr/bin/{minor}", f"/usr/local/bin/{minor}"):
                if Path(system).exists():
                    candidates.append((system, {"PYTHONPATH": f"{c.ROOT}:{site_packages}"},
                                       f"{system} with PYTHONPATH={c.ROOT}:{site_packages} (user nobody cannot run the venv's "
                                       f"interpreter {Path(c.PYTHON).resolve()})"))
        for python, env, how in candidates:
            try:
                r = subprocess.run([python, "-c", probe], user="nobody", capture_output=True, text=True, cwd="/",
                                   env={**os.environ, **env, "HOME": "/tmp"}, timeout=120)
            except (OSError, subprocess.SubprocessError):
                continue
            if r.returncode == 0:
                return python, env, how
        return None

    def _freeze(self, path: Path) -> bool:
        r = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
        if r.returncode == 0:
            self.immutable.append(path)
            return True
        self.say(f"chattr +i {path} failed ({r.stderr.strip()}): variant skipped")
        return False

    def _unfreeze(self, base: Path) -> None:
        for path in list(self.immutable):
            if str(path).startswith(str(base)):
                subprocess.run(["chattr", "-i", str(path)], capture_output=True)
                self.immutable.remove(path)

    # ------------------------------------------------------------------ 7. dagster dev on the same home
    def dev(self) -> None:
        home = self.home("dev")
        dh = home / "dagster"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        factory = str(Path(c.PYTHON).with_name("factory"))
        self.say(f"dev: factory dev on port {port}, then a factory run on the same home")
        env = {"FACTORY_SLOT_WAIT_S": "120", "FACTORY_AUTOMATION_INTERVAL_S": "10"}
        dev = Proc(self.logs, "dev-dagster", home, command=[factory, "dev", "-h", "127.0.0.1", "-p", str(port)], env=env)
        up = None
        while dev.poll() is None and dev.elapsed() < 180:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    up = dev.elapsed()
                    break
            except OSError:
                time.sleep(1)
        out: dict = {"port": port, "dev_up_after_s": up}
        if up is None:
            out["error"] = "dagster dev did not listen within 180 s"
        else:
            time.sleep(20)  # let the automation sensor tick and queue its catch-up runs
            res = self.run_once("dev-factory-run", home, timeout=self.timeout() + 240, env=env)
            summary = res["summary"] or {}
            out["run"] = {k: v for k, v in res.items() if k != "summary"}
            out["rc"] = res["rc"]
            out["completed"] = res["rc"] == 0 and not res["timed_out"]
            out["clear_slot_wait_error"] = res["rc"] == 1 and "waiting for pool" in (summary.get("error") or "")
            out["error"] = summary.get("error")
            out["health_during_dev"] = instance_health(dh)
        t = time.monotonic()
        dev.kill(signal.SIGTERM)
        rc, late = dev.wait(30)
        out["dev_stop"] = {"rc": rc, "stopped_within_30s": not late, "seconds": round(time.monotonic() - t, 1)}
        def group() -> list[str]:
            ps = subprocess.run(["ps", "-o", "pid=,stat=,etimes=,args=", "-s", str(dev.pid)], capture_output=True, text=True)
            return [ln.strip()[:300] for ln in ps.stdout.splitlines() if ln.strip()]

        out["dev_stop"]["session_at_exit"] = group()
        waited = time.monotonic()
        while group() and time.monotonic() - waited < 15:
            time.sleep(0.5)
        out["dev_stop"]["session_after_15s"] = group()
        out["dev_stop"]["group_left_behind"] = bool(out["dev_stop"]["session_after_15s"])
        if out["dev_stop"]["group_left_behind"]:  # what dagster dev started in its session (webserver, daemon, ...)
            for signum in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(dev.pid, signum)
                except ProcessLookupError:
                    break
                time.sleep(5)
        dev.result(late)
        out["health_after_dev"] = instance_health(dh)
        further = self.run_once("dev-further", home, env={"FACTORY_SLOT_WAIT_S": "120"})
        out["further_run"] = {k: v for k, v in further.items() if k != "summary"}
        out["further_ok"] = further["rc"] == 0 and not further["timed_out"]
        out["further_recovered"] = (further["summary"] or {}).get("recovered")
        out["stuck"] = not out["further_ok"]
        out["health"] = instance_health(dh)
        out["corrupted"] = bool(out["health"]["problems"])
        snap = snapshot(home)
        out["differences"] = compare(self.ref["snapshot"], snap)
        out["identical"] = not any(out["differences"].values())
        self.cases["dev"] = {"tries": [out]}
        self.say(f"dev: factory run exit {out.get('rc')} ({out.get('error') or 'no error'}); dagster dev stopped: "
                 f"{out['dev_stop']}; further run ok: {out['further_ok']} (recovered {len(out['further_recovered'] or [])}); "
                 f"identical: {out['identical']} {self._short(out['differences'])}")
        self.save()
        self.cleanup_home(home)

    # ------------------------------------------------------------------ output
    def cleanup_home(self, home: Path) -> None:
        if not self.args.keep:
            shutil.rmtree(home.parent, ignore_errors=True)

    def rows(self) -> list[dict]:
        rows = []
        for case, data in self.cases.items():
            tries = [t for t in data["tries"] if not t.get("skipped")]
            if not tries:
                continue
            rec = [t["recovery_s"] for t in tries if t.get("recovery_s") is not None] if case in ("kill", "term") else []
            completed = [] if case == "unwritable" else [t.get("completed_unaided", t.get("completed")) for t in tries]
            identical = [t.get("identical") for t in tries if "identical" in t]
            checks = ""
            if case == "kill":
                named = [t["recovered_names_dead_run"] for t in tries if t["recovered_names_dead_run"] is not None]
                hit = {}
                for t in tries:
                    p = (t.get("where") or {}).get("phase", "not signalled")
                    hit[p] = hit.get(p, 0) + 1
                checks = f"recovered named the dead run {sum(named)}/{len(named)}; hit {hit}"
            elif case == "term":
                sig = [t for t in tries if t.get("signalled")]
                hit = {}
                for t in tries:
                    p = (t.get("where") or {}).get("phase", "not signalled")
                    hit[p] = hit.get(p, 0) + 1
                left = [t for t in sig if t.get("interrupted_run_status_before_rerun") in ACTIVE]
                checks = (f"exit 143 within 20 s with one stopped=SIGTERM summary {sum(t['term']['ok'] for t in sig)}/{len(sig)}; "
                          f"forced exits {sum(t['term']['forced_exit'] for t in sig)}; runs left active {len(left)}; hit {hit}")
            elif case == "concurrent":
                checks = (f"exactly one ran, other exit 2 naming the home, {{error}} on stdout: {sum(t['ok'] for t in tries)}/{len(tries)}; "
                          f"further run ok {sum(bool(t['further_ok']) for t in tries if t['further_ok'] is not None)}"
                          f"/{sum(t['further_ok'] is not None for t in tries)}")
            elif case == "flaky":
                checks = "; ".join(
                    f"seed {t['fault_seed']}: exit {t['rc']} in {t['wall_s']} s, {t['transient_failures_logged']} transient "
                    f"failures ({t['predicted_failures']} predicted), {t['retries_in_instance']} retries"
                    + (f", failed {t['failed_runs'][0]['partition'] if t['failed_runs'] else '-'}, healed rerun exit "
                       f"{t['healed_rerun']['rc']}" if "healed_rerun" in t else "") + ("" if t["ok"] else " UNEXPECTED")
                    for t in tries)
            elif case == "unwritable":
                checks = (f"exit 2, one stderr line naming the path, {{\"error\"}} only on stdout: {sum(t['ok'] for t in tries)}/{len(tries)}"
                          + "".join(f"; {t['variant']}: exit {t['rc']}, {t['stderr_lines']} stderr line(s), "
                                    f"names path {t['names_path']}, error only {t['stdout_error_only']}" for t in tries if not t["ok"]))
            elif case == "dev":
                t = tries[0]
                ds = t["dev_stop"]
                checks = (f"factory run exit {t.get('rc')} in {(t.get('run') or {}).get('wall_s')} s"
                          f"{' (slot-wait error)' if t.get('clear_slot_wait_error') else ''}; dagster dev exit {ds['rc']} "
                          f"{ds['seconds']} s after SIGTERM, its session {'NOT empty' if ds['group_left_behind'] else 'empty'} "
                          f"15 s later; further run ok {t['further_ok']}")
            elif case == "idempotent":
                t = tries[0]
                checks = self._short(t["differences"])[:200]
            rows.append({
                "case": case, "n": len(tries),
                "completed unaided": f"{sum(bool(x) for x in completed)}/{len(completed)}" if completed else "",
                "identical to reference": f"{sum(bool(x) for x in identical)}/{len(identical)}" if identical else "",
                "stuck homes": sum(bool(t.get("stuck")) for t in tries),
                "corrupted instances": sum(bool(t.get("corrupted")) for t in tries),
                "median recovery s": f"{c.median(rec):.1f}" if rec else "",
                "max recovery s": f"{max(rec):.1f}" if rec else "",
                "checks": checks,
            })
        return rows

    def totals(self) -> dict:
        failures = []
        stuck = corrupted = differences = wrong_exit = 0
        for case, data in self.cases.items():
            for t in data["tries"]:
                if t.get("skipped"):
                    continue
                label = f"{case}#{t.get('try', t.get('variant', 0))}"
                if t.get("stuck"):
                    stuck += 1
                    failures.append({"try": label, "kind": "stuck home", "detail": t.get("rerun") or t.get("further_run")})
                if t.get("corrupted"):
                    corrupted += 1
                    failures.append({"try": label, "kind": "corrupted instance", "detail": (t.get("health") or {}).get("problems")})
                if case != "idempotent" and t.get("identical") is False:
                    differences += 1
                    failures.append({"try": label, "kind": "difference from the reference", "detail": t["differences"]})
                wrong = None
                if case in ("kill", "term") and t.get("completed_unaided") is False:
                    wrong = f"rerun exit {t['rerun']['rc']} (timed out: {t['rerun']['timed_out']})"
                if case == "term" and t.get("signalled") and not t["term"]["ok"]:
                    wrong = f"after SIGTERM: {t['term']}"
                if case == "concurrent" and not t["ok"]:
                    wrong = f"exits {t['rcs']}, loser message {t['loser_message']!r}"
                if case == "unwritable" and not t["ok"]:
                    wrong = f"exit {t['rc']}, stderr {t['stderr']}, stdout {t['stdout']}"
                if case == "flaky" and not (t["ok"] and t["completed"]):
                    wrong = f"fault seed {t['fault_seed']}: exit {t['rc']}; failed runs {t['failed_runs']}; expected {t['expected']}"
                if wrong:
                    wrong_exit += 1
                    failures.append({"try": label, "kind": "wrong exit status / output", "detail": wrong})
                if t.get("leftovers"):
                    failures.append({"try": label, "kind": "runs left active / slots held after the rerun",
                                     "detail": {k: t["health"][k] for k in ("active_runs", "held_slots", "pending_steps")}})
        return {"stuck_homes": stuck, "corrupted_instances": corrupted, "differences": differences,
                "wrong_exit_status": wrong_exit, "failures": failures}

    def document(self, partial: bool) -> dict:
        return {"benchmark": "faults", "partial": partial, "command": " ".join([Path(sys.executable).name, *sys.argv]),
                "machine": c.machine_info(),
                "config": {"range": [START, END], "window_days": WINDOW_DAYS, "simulator": SIMULATOR, "candidate": CANDIDATE,
                           "kills": self.args.kills, "terms": self.args.terms, "concurrent": self.args.concurrent,
                           "seed": self.args.seed, "fault_rate": FAULT_RATE, "rerun_timeout_s": self.timeout() if self.ref else None,
                           "tmp": str(self.tmp), "logs": str(self.logs)},
                "code_versions_seen": dict(CODE_SEEN), "reference": self.ref, "cases": self.cases, "table": self.rows(), "totals": self.totals(),
                "elapsed_s": round(time.perf_counter() - self.started, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", help="write the results here (and every process's log under OUT.logs/)")
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--terms", type=int, default=5)
    p.add_argument("--concurrent", type=int, default=5, help="repeats of the two-runs-at-once case")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="3 kills, 1 SIGTERM, 2 concurrent repeats")
    p.add_argument("--dev", action="store_true", help="also run a factory run while `factory dev` runs on the same home")
    p.add_argument("--only", help="comma-separated cases (reference always runs): "
                   "idempotent,unwritable,concurrent,flaky,kill,term,dev")
    p.add_argument("--keep", action="store_true", help="keep the temporary homes")
    p.add_argument("--tmp", help="where the homes go (default: a new temporary directory)")
    # the child: one factory run
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--home", help=argparse.SUPPRESS)
    p.add_argument("--fault-rate", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--fault-seed", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    if args.quick:
        args.kills, args.terms, args.concurrent = 3, 1, 2
    only = set(args.only.split(",")) if args.only else {"idempotent", "unwritable", "concurrent", "flaky", "kill", "term"} \
        | ({"dev"} if args.dev else set())
    suite = Suite(args)
    suite.say(f"homes under {suite.tmp}, logs under {suite.logs}")
    try:
        suite.reference()
        if "idempotent" in only:
            suite.idempotent()
        if "unwritable" in only:
            suite.unwritable()
        if "flaky" in only:
            suite.flaky()
        # kills and SIGTERMs interleaved in blocks, so a partial result covers both
        if "kill" in only or "term" in only:
            kills = plan_signals(suite.rng, args.kills if "kill" in only else 0, suite.ref, suite.ref_lines)
            terms = plan_signals(suite.rng, args.terms if "term" in only else 0, suite.ref, suite.ref_lines)
            order = []
            ki = ti = 0
            while ki < len(kills) or ti < len(terms):
                for _ in range(4):
                    if ki < len(kills):
                        order.append(("kill", ki, kills[ki]))
                        ki += 1
                if ti < len(terms):
                    order.append(("term", ti, terms[ti]))
                    ti += 1
            for case, i, plan in order:
                signum = signal.SIGKILL if case == "kill" else signal.SIGTERM
                suite.cases.setdefault(case, {"tries": []})
                t = suite.signal_try(case, i, plan, signum)
                suite.cases[case]["tries"].append(t)
                suite.report_signal(case, i, len(kills) if case == "kill" else len(terms), plan, t)
                suite.save()
                suite.cleanup_home(Path(t["home"]))
        if "concurrent" in only:
            suite.concurrent(args.concurrent)
        if "dev" in only:
            suite.dev()
    finally:
        suite._unfreeze(suite.tmp)
        if not args.keep:
            shutil.rmtree(suite.tmp, ignore_errors=True)
    c.print_table(suite.rows(), f"factory run under operator faults ({START} .. {END}, reference {suite.ref['wall_s']} s; "
                                f"{round(time.perf_counter() - suite.started)} s in all)")
    totals = suite.totals()
    print(f"\ntotals: stuck homes {totals['stuck_homes']}, corrupted instances {totals['corrupted_instances']}, "
          f"differences from the reference {totals['differences']}, wrong exit status/output {totals['wrong_exit_status']}")
    for f in totals["failures"]:
        print(f"  {f['try']}: {f['kind']}: {json.dumps(f['detail'], default=str)[:400]}")
    if len({v.split("+")[-1] for v in CODE_SEEN}) > 1:
        print(f"\nnote: factory_assets changed while the suite ran; processes per code version (git HEAD + sha256 of "
              f"factory_assets/**/*.py): {CODE_SEEN} (each try's runs carry their \"code\")")
    c.write_json(args.json, suite.document(partial=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
