"""``factory``: run the whole factory through Dagster for a date range, or open the UI on its instance.

    factory run [--source S] [--path P] [--start D] [--end D] [--backtest] [--home H] [--json] [--verbose]
                [--executor in_process|multiprocess|celery|k8s] [--storage duckdb|parquet]
    factory dev [dagster dev options...]
    factory serve [--host 127.0.0.1] [--port 8000]   (factory_assets.serving: HTTP recommendations of the champion)
    factory models list | show VERSION | diff A B | rollback [--to VERSION] --reason TEXT   (factory_assets.ml.models_cli)
    factory demo [--json] [--strengths A,B,C] [--model-kind blend|ranker] [--home H]   (factory_assets.demo)

``factory run`` materialises every raw and feature partition of the range (one ``daily_ingest`` run per
day), then trains, gates and (if the gates pass) promotes one candidate per day for the last 7 days of the
range (``--backtest``: every day with a full window), one ``daily_training`` run per day.  The simulator's
default range is the 56 days ending yesterday (UTC), automation's own timeline.  The runs go to the Dagster
instance under ``FACTORY_HOME`` (``$DAGSTER_HOME`` if set), so they are visible in the UI.  The chosen source
travels as run config, so no run depends on this shell's environment.  Operator faults (a killed earlier run,
SIGTERM, a second run on the same home, an unwritable home) are handled by :mod:`factory_assets.platform.runguard`.

With ``--json`` standard output is exactly one JSON document (logs go to standard error)::

    {"source", "warehouse", "storage", "dagster_home", "range": {"start", "end"},
     "served_model": {"version", "sha256", "path", "partition_day"} | null,
     "evaluation": {"model": {...}, "baselines": {"popularity": {...}, "repeat": {...}}, "references": {...},
                    "segments": [...], "champion": {...} | null},
     "checks": [{"name", "passed", "reason"}],
     "partitions": ["YYYY-MM-DD", ...],
     "trained": [{"partition", "version", "verdict", "status", "reason", "failed_gates", "run_id"}],
     "registry": {"versions", "promotions"},
     "runs": [{"job", "partition", "run_id", "success", "outcome", "error" (error/canceled only)}],
     "recovered": [{"run_id", "job", "partition", "pid", "action"}], "stopped": "SIGTERM" | "SIGINT" | null,
     "elapsed_s"}

``evaluation`` and ``checks`` describe the last day's candidate; ``served_model`` (with ``partition_day``) is
the champion at the end.  With ``--executor`` other than ``in_process`` the runs go through that executor, several
at once (:mod:`factory_assets.distributed`): a ``runs`` row may then cover a range of days (``"partition":
"D1...D2"``, ``"days"``).  A refused input prints ``{"error": "..."}`` instead (exit status 2).  Exit status
(:func:`exit_code`): 0 when every run succeeded or stopped at a failed blocking gate and a model is served, 1 on
an error, 2 on refused input, 128 + the signal after SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys

# implicit's ALS warns (and slows down) with a multi-threaded OpenBLAS; ./dev sets this too, .venv/bin/factory did not
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import time
import warnings
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from factory_assets.platform import settings

SIMULATOR_DAYS = 56  # the default simulator run: the eight weeks ending yesterday (UTC) ...
SIMULATOR_SHIFT_BEFORE_END = 19  # ... with the preference shift in week six (as 2024-11-11 in 2024-10-06..11-30)


def default_simulator_range(today: date | None = None) -> tuple[date, date, date]:
    """``(start, end, shift_date)`` of the default simulator run: the 56 days ending yesterday (UTC), the shift
    19 days before the end.  Ending yesterday puts the run on automation's timeline: ``./dev ui`` afterwards only
    continues it with each new day (a fixed 2024 range made automation ingest the 35 days up to yesterday and
    promote a model of those over the run's champion)."""
    today = today or datetime.now(timezone.utc).date()
    end = today - timedelta(days=1)
    return end - timedelta(days=SIMULATOR_DAYS - 1), end, end - timedelta(days=SIMULATOR_SHIFT_BEFORE_END)
TRAIN_LAST_DAYS = 7

log = logging.getLogger("factory")


def _parse_day(text: str, flag: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise SystemExit(f"factory: {flag} {text!r} is not an ISO date (YYYY-MM-DD)") from None


def _check_range(start: date, end: date, first: date, last: date, window_days: int) -> None:
    """Refuse ranges outside the partitions definition, reversed, or too short for one training window."""
    if start > end:
        raise SystemExit(f"factory: --start {start} is after --end {end}")
    if start < first:
        raise SystemExit(f"factory: --start {start} is before the first partition {first} (FACTORY_PARTITION_START)")
    if end > last:
        raise SystemExit(f"factory: --end {end} is after the last complete UTC day {last}")
    if (end - start).days + 1 < window_days:
        raise SystemExit(
            f"factory: the range {start}..{end} has {(end - start).days + 1} days; a candidate needs a full "
            f"{window_days}-day window"
        )


def run(args: argparse.Namespace, simulator: dict | None = None, candidate: dict | None = None) -> dict:
    """Execute the range and return the summary (see the module docstring).

    ``simulator`` (``SimulatorOptions`` fields, e.g. ``{"shift_strength": 3.0}``) and ``candidate``
    (``CandidateConfig`` fields, e.g. ``{"model_kind": "blend"}``) travel as run config too; ``factory demo``
    uses them.

    Operator faults (:mod:`factory_assets.platform.runguard`): one ``factory run`` per home (a second one is refused);
    the Dagster instance is created under a file lock; runs of killed processes are marked failed and their
    pool slots freed before anything starts; a slot held by another live run is waited for at most
    ``FACTORY_SLOT_WAIT_S`` seconds; SIGTERM/SIGINT stop at the next step boundary (``summary["stopped"]``).

    Raises:
        SystemExit: (a message) for a refused input, a home in use or an unwritable home.
        runguard.SlotWaitTimeout: the warehouse pool stayed taken by another run.
    """
    from factory_assets.platform import runguard

    started = time.perf_counter()
    source = args.source or settings.source_name()
    if source not in settings.SOURCE_NAMES:
        raise SystemExit(f"factory: unknown source {source!r}; known: {', '.join(settings.SOURCE_NAMES)}")
    path = args.path if args.path is not None else settings.source_path()
    if source != "simulator" and not path:
        raise SystemExit(f"factory: source {source!r} needs --path (or FACTORY_SOURCE_PATH)")
    if path:
        path = str(Path(path).expanduser().resolve())
        if not Path(path).exists():
            raise SystemExit(f"factory: --path {path} does not exist")
    home = Path(args.home).expanduser().resolve() if args.home else settings.factory_home()
    window_days = settings.window_days(source)  # resolved once here, passed to every run as its config
    try:
        settings.HomeLayout(home, source).check_format()
    except settings.HomeFormatError as exc:
        raise SystemExit(f"factory: {exc}") from None
    if source == "simulator" and (args.start is None or args.end is None):
        default_start, default_end, shift = default_simulator_range()
        if args.start is None and args.end is None and "shift_date" not in (simulator or {}):
            simulator = {**(simulator or {}), "shift_date": shift.isoformat()}
        start_s, end_s = args.start or default_start.isoformat(), args.end or default_end.isoformat()
    elif args.start is None or args.end is None:
        raise SystemExit(f"factory: source {source!r} needs --start and --end")
    else:
        start_s, end_s = args.start, args.end
    start, end = _parse_day(start_s, "--start"), _parse_day(end_s, "--end")
    slot_wait_s = settings.slot_wait_seconds()

    dagster_home = _writable_home(home)
    from factory_assets.platform.partitions import DAILY, WAREHOUSE_POOL

    first = date.fromisoformat(DAILY.get_first_partition_key())
    last = date.fromisoformat(DAILY.get_last_partition_key())
    _check_range(start, end, first, last, window_days)
    try:
        with runguard.home_lock(home):  # HomeInUse is raised on entry only
            return _run_locked(args, source, path, home, dagster_home, start, end, simulator, candidate, started,
                               slot_wait_s, WAREHOUSE_POOL, window_days)
    except runguard.HomeInUse as exc:
        raise SystemExit(f"factory: {exc}") from None


def _writable_home(home: Path) -> Path:
    """Create ``home`` and the Dagster instance directory and prove both writable; return the latter.

    Raises:
        SystemExit: one line naming the path and the failed permission (exit status 2).
    """
    target = home
    try:
        home.mkdir(parents=True, exist_ok=True)
        for target in (home, settings.dagster_home_path(home)):
            target.mkdir(parents=True, exist_ok=True)
            probe = target / f".write-probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        return settings.dagster_home(home)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        where = target if not exc.filename or Path(exc.filename).name.startswith(".write-probe-") else exc.filename
        which = ("the Dagster instance directory must be writable: fix or unset DAGSTER_HOME"
                 if target != home else "the factory home must be writable; use --home or FACTORY_HOME")
        raise SystemExit(f"factory: cannot write to {where}: {reason.lower()} ({which})") from None


def _run_locked(args, source, path, home, dagster_home, start, end, simulator, candidate, started, slot_wait_s,
                pool, window_days) -> dict:
    import socket
    import uuid

    from factory_assets.platform import runguard
    from factory_assets.definitions import INGEST_JOB, TRAINING_JOB, defs
    from factory_assets.resources import Factory

    factory = Factory(home=str(home), source=source, source_path=path or "", simulator=dict(simulator or {}),
                      policy={"window_days": window_days, "history_days": settings.history_days(source)},
                      storage=settings.HomeLayout(home, source).storage(settings.storage_name()))
    run_config = {"resources": factory.run_config(),
                  # Dagster's console logger prints every event at DEBUG: INFO and above unless --verbose
                  "loggers": {"console": {"config": {"log_level": "DEBUG" if getattr(args, "verbose", False) else "INFO"}}}}
    training_config = {**run_config, "ops": {"candidate_model": {"config": dict(candidate)}}} if candidate else run_config
    if not getattr(args, "verbose", False):  # a fresh instance's schema migrations print ~340 alembic INFO lines
        logging.getLogger("alembic").setLevel(logging.WARNING)
    instance = runguard.open_instance(dagster_home)
    reaped = runguard.reap_dead_runs(instance, (pool,))
    days = [start + timedelta(days=i) for i in range((end - start).days + 1)]
    first_trainable = start + timedelta(days=window_days - 1)
    train_days = [d for d in days if d >= first_trainable]
    if not args.backtest:
        train_days = train_days[-TRAIN_LAST_DAYS:]
    if getattr(args, "train_from", None) is not None:  # factory demo on a real log: history ingested, trained later
        train_days = [d for d in train_days if d >= args.train_from]

    runs: list[dict] = []
    trained: list[dict] = []
    context = {"stopped": None}
    host = socket.gethostname()

    def execute(job_name: str, day: date) -> str:
        runguard.wait_for_pool(instance, pool, slot_wait_s, stop)
        run_id = str(uuid.uuid4())  # known before the run starts: the stop watcher names it
        with stop.running(instance, run_id), runguard.slot_watchdog(
                instance, pool, run_id, slot_wait_s, give_up(run_id, job_name, day)):
            result = defs.resolve_job_def(job_name).execute_in_process(
                run_config=training_config if job_name == TRAINING_JOB else run_config, instance=instance,
                partition_key=day.isoformat(), raise_on_error=False, run_id=run_id,
                tags={"factory/cli": "run", runguard.PID_TAG: str(os.getpid()), runguard.HOST_TAG: host},
            )
        row = {"job": job_name, "partition": day.isoformat(), "run_id": run_id, "success": result.success}
        if stop.requested:
            context["stopped"] = signal.Signals(stop.signum).name
        if stop.requested and not result.success:  # interrupted: the step's write rolled back
            runguard.finish_canceled(instance, run_id, f"factory run stopped by {context['stopped']}")
            row["outcome"] = "canceled"
            row["error"] = f"canceled by {context['stopped']}"
        else:  # (a signal after the run's last step leaves it as it ended)
            row["outcome"] = _outcome(result)
            if row["outcome"] == "error":
                row["error"] = _failure(result)
        runs.append(row)
        if job_name == TRAINING_JOB:
            verdict = _verdict(result, day, row)
            if verdict is not None:
                trained.append(verdict)
        text = {"ok": "ok", "gate": "stopped at a blocking gate", "canceled": row.get("error"),
                "error": f"FAILED: {row.get('error')}"}[row["outcome"]]
        log.info("%s %s: %s (run %s)", job_name, day, text, run_id)
        return row["outcome"]

    def summary_now(stopped: str | None, read_registry: bool = True) -> dict:
        return _summary(source, factory, dagster_home, start, end, days, trained, runs, reaped, stopped, started,
                        read_registry)

    def give_up(run_id: str, job_name: str, day: date):
        def on_timeout(message: str) -> None:  # the slot watchdog's thread: the main thread is stuck in Dagster
            runguard.abandon_run(instance, run_id, message)
            runs.append({"job": job_name, "partition": day.isoformat(), "run_id": run_id, "success": False,
                         "outcome": "error", "error": message})
            _emit(summary_now(None, read_registry=False), args.json)
            logging.shutdown()
            os._exit(1)
        return on_timeout

    def forced_summary(signum: int) -> None:  # the stop watcher's last word when a step would not stop
        context["stopped"] = signal.Signals(signum).name
        _emit(summary_now(context["stopped"], read_registry=False), args.json)

    executor = settings.executor_name()
    if executor != "in_process":
        with runguard.StopSignals(on_forced_exit=forced_summary) as stop:
            _run_parallel(instance, days, train_days, run_config, training_config, runs, trained, context, stop,
                          {"factory/cli": "run", "factory/executor": executor})
        return summary_now(context["stopped"])

    with runguard.StopSignals(on_forced_exit=forced_summary) as stop:
        try:
            for day in days:
                stop.raise_if_requested()
                outcome = execute(INGEST_JOB, day)
                if context["stopped"]:
                    break
                if outcome != "ok":
                    # every later window would hold this hole, and a permanent source error (a wrong file) fails
                    # every day alike: stop here rather than fail each remaining day one by one
                    log.error("stopping: daily_ingest %s failed (run %s); later days and training not run", day, runs[-1]["run_id"])
                    train_days = []
                    break
            for day in train_days:
                if context["stopped"]:
                    break
                stop.raise_if_requested()
                execute(TRAINING_JOB, day)
                if context["stopped"]:
                    break
        except runguard.Stopped as exc:
            context["stopped"] = signal.Signals(exc.signum).name
        if context["stopped"]:
            log.warning("factory run stopped by %s; rerun the same command to continue", context["stopped"])
    return summary_now(context["stopped"])


def _run_parallel(instance, days, train_days, run_config, training_config, runs, trained, context, stop, tags) -> None:
    """The range with ``execute_job`` and the configured executor (:mod:`factory_assets.distributed`): the
    day-local assets as ``FACTORY_PARALLEL_RUNS`` range runs at once, the look-back assets as one range run,
    then one candidate after another.  A failed run stops the range after its phase; SIGTERM/SIGINT launch
    nothing more and cancel the runs in flight (``summary["stopped"]``)."""
    from factory_assets import distributed
    from factory_assets.definitions import INGEST_JOB, TRAINING_JOB
    from factory_assets.platform import runguard

    parallel = settings.parallel_runs()

    def ended(row: dict) -> None:
        verdict = row.pop("verdict", None)
        if row["outcome"] == "canceled" and row["run_id"]:  # its pool slots now, not at the next run's reaping
            runguard.finish_canceled(instance, row["run_id"], f"factory run stopped by {context['stopped']}")
        runs.append(row)
        if verdict is not None:
            trained.append(verdict)
        text = {"ok": "ok", "gate": "stopped at a blocking gate"}.get(row["outcome"], f"FAILED: {row.get('error')}")
        log.info("%s %s: %s (run %s)", row["job"], row["partition"], text, row["run_id"])

    def stopped() -> bool:
        if stop.requested:
            context["stopped"] = signal.Signals(stop.signum).name
        return stop.requested

    # day-local assets: a contiguous range per run in flight; look-back assets: one run over the whole range
    for phase, spans in ((distributed.DAY_LOCAL, distributed.chunks(days, parallel)), (distributed.LOOKBACK, [days])):
        rows = distributed.run_days(INGEST_JOB, spans, run_config, tags, parallel, phase, stopped, ended)
        if stopped():
            log.warning("factory run stopped by %s; rerun the same command to continue", context["stopped"])
            return
        failed = [r["partition"] for r in rows if r["outcome"] != "ok"]
        if failed:
            log.error("stopping: daily_ingest failed for %s; later phases and training not run", ", ".join(failed))
            return
    for day in train_days:
        distributed.run_days(TRAINING_JOB, [day], training_config, tags, 1, None, stopped, ended)
        if stopped():
            log.warning("factory run stopped by %s; rerun the same command to continue", context["stopped"])
            return


def _outcome(result) -> str:
    """``ok``; ``gate`` when every failed step stopped at a failed blocking asset check (the factory did its
    job: the decision is recorded); ``error`` otherwise."""
    if result.success:
        return "ok"
    failures = result.get_step_failure_events()
    if failures and all(getattr(e.event_specific_data.error, "cls_name", "") == "DagsterAssetCheckFailedError"
                        for e in failures):
        return "gate"
    return "error"


def _verdict(result, day: date, row: dict) -> dict | None:
    """This run's decision for ``day`` from its own events (not the registry's later state).

    ``{"partition", "version", "verdict": promoted|champion|kept|shadow|rejected|backtest|error|canceled,
    "status", "reason", "failed_gates": [{"name", "reason"}], "run_id"}``; None when nothing was decided.
    """
    from dagster import DagsterEventType

    from factory_assets.ml.defs.candidate import CANDIDATE_MODEL
    from factory_assets.ml.defs.served import SERVED_MODEL

    out = {"partition": day.isoformat(), "run_id": row["run_id"], "version": None, "status": None, "failed_gates": []}
    candidate, served = None, None
    for event in result.all_events:
        if event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
            key = event.asset_key.to_user_string()
            meta = {k: getattr(v, "value", v) for k, v in event.event_specific_data.materialization.metadata.items()}
            if key == CANDIDATE_MODEL:
                candidate = meta
            elif key == SERVED_MODEL:
                served = meta
        elif event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION:
            evaluation = event.event_specific_data
            if not evaluation.passed:
                out["failed_gates"].append({"name": evaluation.check_name, "reason": evaluation.description})
    if row["outcome"] in ("error", "canceled"):
        out.update(verdict=row["outcome"], reason=row.get("error"))
        if candidate:
            out.update(version=candidate.get("version"), status=candidate.get("registry_status"))
        return out
    if candidate is None:
        return None
    out.update(version=candidate.get("version"), status=candidate.get("registry_status"))
    verdict = candidate.get("verdict")
    if verdict == "promote":
        if served is not None and served.get("promoted"):
            out.update(verdict="promoted", reason="all gates passed")
        elif served is not None and served.get("version") == candidate.get("version"):
            out.update(verdict="champion", reason="all gates passed; a rerun reproduced the champion itself")
        else:
            out.update(verdict="kept", reason="all gates passed; the champion stays "
                       + (f"v{served.get('version')}" if served else "(served_model did not run)"))
    elif verdict == "reject":
        out.update(verdict="rejected", reason="; ".join(f"{g['name']}: {g['reason']}" for g in out["failed_gates"]))
    else:
        out.update(verdict=verdict, reason=candidate.get("reason") or "; ".join(
            f"{g['name']}: {g['reason']}" for g in out["failed_gates"]))
    return out


def _summary(source, factory, dagster_home, start, end, days, trained, runs, reaped, stopped, started,
             read_registry: bool = True) -> dict:
    from factory_assets.data.defs.definitions import INGEST_JOB
    from factory_assets.ml import registry

    last_row = window = None
    n_versions = n_promotions = None
    if read_registry:
        last_day = date.fromisoformat(trained[-1]["partition"]) if trained else None
        last_version = trained[-1].get("version") if trained else None
        with factory.registry() as reg:
            # this run's decision for the last day (a re-run decides again; the version row keeps the first one)
            last_row = registry.latest_decision(reg, int(last_version)) if last_version is not None else None
            n_versions = len(registry.versions(reg))
            events = registry.history(reg)
            n_promotions = int((events["action"] == "promoted").sum())
            window = registry.load_window_manifest(reg, last_day) if last_day else None
    champion = registry.read_alias(factory.layout.aliases)
    checks = []
    if window is not None:
        missing = {view: days for view, days in window["missing"].items() if days}
        checks.append({"name": "window_complete", "passed": bool(window["complete"]),
                       "reason": f"all {window['days']} days of every feature view present" if window["complete"]
                       else "missing feature partitions: " + "; ".join(f"{v}: {', '.join(d)}" for v, d in missing.items())})
    evaluation = None
    if last_row is not None:
        checks += [{"name": g["name"], "passed": g["passed"], "reason": g["reason"]} for g in last_row["gates"]]
        evaluation = dict(last_row["evaluation"])
        evaluation["champion"] = last_row.get("champion")  # the champion on the same users, or None
    return {
        "source": source,
        "warehouse": str(factory.layout.lake if factory.storage == "parquet" else factory.layout.warehouse),
        "storage": factory.storage,
        "dagster_home": str(dagster_home),
        "range": {"start": start.isoformat(), "end": end.isoformat()},
        "served_model": None if champion is None else {k: champion[k] for k in ("version", "sha256", "path", "partition_day")},
        "evaluation": evaluation,
        "checks": checks,
        # the days this run materialised: a successful daily_ingest run each (not the whole requested range)
        "partitions": sorted({d for r in runs if r["job"] == INGEST_JOB for d in r.get("days", [r["partition"]])}
                             - {d for r in runs if r["job"] == INGEST_JOB and r.get("outcome") != "ok"
                                for d in r.get("days", [r["partition"]])}),
        "trained": trained,
        "registry": {"versions": n_versions, "promotions": n_promotions},
        "runs": runs,
        "recovered": reaped,
        "stopped": stopped,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }


def exit_code(summary: dict) -> int:
    """0 when every run succeeded or stopped at a failed blocking gate (its decision recorded) and a model is
    served; 128 + signal when SIGTERM/SIGINT stopped the run; 1 otherwise (a step errored, nothing served)."""
    if summary.get("stopped"):
        from factory_assets.platform.runguard import exit_status

        return exit_status(signal.Signals[summary["stopped"]])
    ok = all(r["outcome"] in ("ok", "gate") for r in summary["runs"])
    return 0 if ok and summary["served_model"] else 1


def _emit(summary: dict, as_json: bool) -> None:
    if as_json:
        json.dump(summary, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        _print_human(summary)
    sys.stdout.flush()


def _failure(result) -> str:
    """One line per failed step of an in-process run: ``step: the real error's first line`` ("; "-joined).

    Dagster wraps a user exception as "Error occurred while executing op ...:" with the exception as its
    cause; the innermost cause is reported (``ExceptionClass: message`` unless it is a ``dagster.Failure``).
    """
    lines = []
    for event in result.get_step_failure_events():
        error = getattr(event.event_specific_data, "error", None)
        retried = None
        while error is not None and error.cause is not None and error.cls_name in (
                "DagsterExecutionStepExecutionError", "DagsterUserCodeExecutionError", "DagsterResourceFunctionError",
                "RetryRequestedFromPolicy"):
            if error.cls_name == "RetryRequestedFromPolicy":  # "Exceeded max_retries of 4": say why it was retried
                retried = error.message.strip().splitlines()[0].rsplit(": ", 1)[-1]
            error = error.cause
        message = (error.message if error is not None else event.message or "failed").strip().splitlines()
        first = message[0] if message else "failed"
        head, sep, rest = first.partition(": ")
        if error is not None and sep and head.rsplit(".", 1)[-1] == error.cls_name:  # "pkg.mod.Failure: text"
            first = rest
        if error is not None and error.cls_name not in ("Failure", "DagsterAssetCheckFailedError"):
            first = f"{error.cls_name}: {first}"
        lines.append(f"{event.step_key}: {first}" + (f" ({retried})" if retried else ""))
    return "; ".join(lines) or "the run failed (no step failure recorded; see the Dagster run log)"


def _print_human(summary: dict) -> None:
    out = sys.stdout
    print(f"factory run: {summary['source']} {summary['range']['start']} .. {summary['range']['end']} "
          f"in {summary['elapsed_s']} s", file=out)
    if summary.get("stopped"):
        print(f"  STOPPED by {summary['stopped']}: rerun the same command to continue", file=out)
    for row in summary.get("recovered") or []:
        print(f"  recovered: {row['job'] or 'run'} {row['partition'] or ''} (run {row['run_id']}): {row['action']}", file=out)
    errors = [r for r in summary["runs"] if r["outcome"] == "error"]
    print(f"  runs: {len(summary['runs'])} ({len(errors)} errors)", file=out)
    for row in errors:
        print(f"    {row['job']} {row['partition']} failed: {row['error']}", file=out)
    for row in summary["trained"]:
        version = f"v{row['version']}" if row.get("version") is not None else "no version"
        print(f"  candidate {row['partition']}: {version} {row['verdict']}"
              + ("" if row["verdict"] == "promoted" else f" ({row['reason']})"), file=out)
    if summary["evaluation"]:
        ev = summary["evaluation"]
        print(f"  last candidate NDCG@10 {ev['model']['ndcg_at_10']:.4f} on {ev['model']['n_users']} users; baselines: "
              + ", ".join(f"{n} {m['ndcg_at_10']:.4f}" for n, m in ev["baselines"].items())
              + ("" if not ev.get("champion") else f"; champion v{ev['champion']['version']} {ev['champion']['ndcg_at_10']:.4f}"),
              file=out)
    served = summary["served_model"]
    print(f"  served model: {'none' if served is None else 'v' + str(served['version']) + ' ' + served['path']}", file=out)
    if summary["registry"]["versions"] is not None:
        print(f"  registry: {summary['registry']['versions']} versions, {summary['registry']['promotions']} promotions", file=out)
    print(f"  warehouse: {summary['warehouse']}", file=out)
    home = Path(summary["warehouse"]).parents[1]
    hint = "./dev ui" if home == (Path.cwd() / ".factory_home").resolve() else f"FACTORY_HOME={home} ./dev ui"
    print(f"  Dagster UI: {hint}   (DAGSTER_HOME={summary['dagster_home']})", file=out)


def _strengths(text: str | None) -> list[float]:
    from factory_assets.demo import DEFAULT_STRENGTH

    if text is None:
        return [DEFAULT_STRENGTH]
    if not text.strip():
        raise SystemExit("factory: --strengths is empty; give one or more strengths, e.g. 0.75,1.5,3")
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"factory: --strengths {text!r} is not a comma-separated list of numbers") from None
    if not values or any(not 0 <= v <= 10 for v in values):
        raise SystemExit(f"factory: --strengths {text!r}: give one or more strengths in 0..10")
    return values


def demo(args: argparse.Namespace) -> int:
    """``factory demo``: run the experiment per strength, report it to the UI, print JSON or a table."""
    from factory_assets import demo as experiment

    base = Path(args.home).expanduser().resolve() if args.home else settings.factory_home()
    source = getattr(args, "source", None) or "simulator"
    if source == "simulator":
        if args.path:
            return _refuse("factory: --path is for --source online_retail; the simulator needs no file", as_json=args.json)
        strengths = _strengths(args.strengths)
        configs = [experiment.DemoConfig(strength=s, model_kind=args.model_kind or "blend") for s in strengths]
    else:
        if args.strengths:
            return _refuse("factory: --strengths is for the simulator; a real log has its own shift", as_json=args.json)
        if not args.path:
            return _refuse(f"factory: demo --source {source} needs --path to its file", as_json=args.json)
        if not Path(args.path).is_file():
            return _refuse(f"factory: demo --source {source}: {args.path} is not a file "
                           f"({'a directory' if Path(args.path).is_dir() else 'no such file'})", as_json=args.json)
        configs = [experiment.real_log_config(source, str(Path(args.path).resolve()), args.model_kind or "ranker")]
    try:
        results = [experiment.run_strength(base, config) for config in configs]
    except RuntimeError as exc:  # a run of the factory failed: one line (its UI has the details), exit 1
        message = str(exc)
        if args.json:
            json.dump({"error": message}, sys.stdout)
            sys.stdout.write("\n")
        print(message, file=sys.stderr)
        return 1
    from dagster import DagsterInstance

    from factory_assets.demo_report import report

    settings.dagster_home(base)  # the main instance (``./dev ui``) shows the adaptation_demo asset
    instance = DagsterInstance.get()
    for result in results:
        report(instance, result)
    if args.json:
        document = results[0] if len(results) == 1 else {"runs": results}
        json.dump(document, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for result in results:
            s = result["summary"]
            if result.get("source", "simulator") != "simulator":
                print(f"{result['source']} ({result['elapsed_s']} s): hit-rate@10 mean after {result['frozen_on']}: factory "
                      f"{s['factory_hit_rate_mean_after']}, factory_live {s['factory_live_hit_rate_mean_after']}, static "
                      f"{s['static_hit_rate_mean_after']}; {len(s['promotions'])} promotions; plot {result['outputs']['png']}")
                continue
            print(f"shift strength {result['shift_strength']:g} (shift {result['shift_date']}, {result['elapsed_s']} s), "
                  f"share of the oracle's hit-rate@10: factory_live on the shift day {s['factory_live_vs_oracle_shift_day']} "
                  f"(target >= 0.70); factory on {s['first_day_after_shift']} {s['factory_vs_oracle_first_day_after']} "
                  f"(target >= 0.72); week before {s['factory_vs_oracle_week_before']}, back within 0.02 on "
                  f"{s['factory_recovered_on']} (target: by the 3rd day after); static after <= {s['static_vs_oracle_max_after']} "
                  f"(target <= 0.66); {len(s['promotions'])} promotions; plot {result['outputs']['png']}")
    return 0


def dev(extra: list[str]) -> int:
    """Seed the instance under FACTORY_HOME and exec ``dagster dev`` on it, with the project's ``workspace.yaml``
    (the DataOps and MLOps code locations) unless ``extra`` names another target."""
    from factory_assets.platform import runguard

    try:
        home = settings.factory_home()
        try:
            settings.HomeLayout(home, settings.source_name()).check_format()
        except settings.HomeFormatError as exc:
            raise SystemExit(f"factory: {exc}") from None
        _writable_home(home)
        runguard.open_instance(settings.dagster_home(home))  # its schemas stamped once, under the instance lock
    except SystemExit as exc:
        return _refuse(str(exc.code), as_json=False)
    beside = Path(sys.executable).with_name("dagster")  # the venv's own, whether or not it is on PATH
    program = str(beside) if beside.exists() else "dagster"
    targets = ("-w", "--workspace", "-m", "--module-name", "-f", "--python-file", "--package-name", "-d")
    if not any(arg.split("=")[0] in targets for arg in extra):  # default: the two code locations of workspace.yaml
        extra = ["-w", str(settings.PROJECT_WORKSPACE_YAML), *extra]
    os.execvp(program, [program, "dev", *extra])
    return 0  # pragma: no cover - exec does not return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="factory", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="run the factory end to end for a date range")
    run_p.add_argument("--source", choices=settings.SOURCE_NAMES, help="default: FACTORY_SOURCE or simulator")
    run_p.add_argument("--path", help="file or folder of a file-based source (default: FACTORY_SOURCE_PATH)")
    run_p.add_argument("--start", help=f"first day, ISO (simulator default: {SIMULATOR_DAYS} days before yesterday)")
    run_p.add_argument("--end", help="last day, ISO (simulator default: yesterday, UTC, so automation continues the run)")
    run_p.add_argument("--backtest", action="store_true", help="train a candidate for every day with a full window")
    run_p.add_argument("--home", help="FACTORY_HOME (default ./.factory_home)")
    run_p.add_argument("--json", action="store_true", help="print one JSON summary on stdout; logs on stderr")
    run_p.add_argument("--verbose", action="store_true", help="also Dagster's DEBUG events and its storage migrations")
    run_p.add_argument("--executor", choices=settings.EXECUTOR_NAMES,
                       help="FACTORY_EXECUTOR for this run (default in_process: one run after another in this process; "
                            "multiprocess / celery / k8s: FACTORY_PARALLEL_RUNS runs at once through execute_job)")
    run_p.add_argument("--storage", choices=settings.STORAGE_NAMES,
                       help="FACTORY_STORAGE of a new home (duckdb: one file; parquet: a file per partition, for "
                            "parallel writers); a home keeps the storage it holds")
    demo_p = sub.add_parser("demo", help="the adaptation experiment: factory vs static model vs oracle under a shift")
    demo_p.add_argument("--strengths", help="comma-separated shift strengths to sweep, e.g. 0.75,1.5,3 "
                        "(default: the simulator's 1.5 only)")
    demo_p.add_argument("--model-kind", choices=("blend", "ranker"),
                        help="candidate model (simulator default blend: ~2 s a fit, the ranker takes ~40 s; online_retail "
                        "default ranker: the factory's model there, the blend does not pass its baseline gate)")
    demo_p.add_argument("--home", help="base FACTORY_HOME; each strength runs in <home>/demo/shift-<s> (default ./.factory_home)")
    demo_p.add_argument("--json", action="store_true", help="print the JSON document on stdout; logs on stderr")
    demo_p.add_argument("--source", choices=("simulator", "online_retail"),
                        help="simulator (default: the preference shift, with an oracle) or online_retail (the run into "
                        "the 2011 holiday season, against a model frozen on 2011-10-31; needs --path)")
    demo_p.add_argument("--path", help="the Online Retail file (.parquet, .csv or .xlsx) for --source online_retail")
    dev_p = sub.add_parser("dev", help="dagster dev on the factory's instance (extra args are passed on)")
    dev_p.add_argument("extra", nargs=argparse.REMAINDER)
    from factory_assets.ml import models_cli

    models_cli.add_parser(sub)
    from factory_assets.serving import serve_cli as service_cli

    service_cli.add_parser(sub)
    # Dagster marks APIs this code location relies on (map_asset_specs) as preview: worth knowing once, in the
    # code, not as two warnings before every command's output
    warnings.filterwarnings("ignore", message=r".*is currently in (preview|beta).*")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["dev"]:  # everything after `dev` is dagster dev's (argparse would refuse a leading option)
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
        try:
            check_settings()
        except settings.SettingsError as exc:
            return _refuse(f"factory: {exc}", as_json=False)
        return dev(argv[1:])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    try:
        return _dispatch(args)
    except settings.SettingsError as exc:  # a bad FACTORY_* variable: one line, not a traceback
        return _refuse(f"factory: {exc}", getattr(args, "json", False))


def _refuse(message: str, as_json: bool) -> int:
    """A refused command: ``message`` on standard error (and ``{"error": message}`` as the one document on
    standard output with ``--json``); returns the exit status, 2."""
    if as_json:
        json.dump({"error": message}, sys.stdout)
        sys.stdout.write("\n")
    print(message, file=sys.stderr)
    return 2


def check_settings(source: str | None = None) -> None:
    """Read every ``FACTORY_*`` setting once, so a bad value stops a command before it starts any run.

    ``source``: the ``--source`` given (its window and history defaults apply), else ``FACTORY_SOURCE``.

    Raises:
        settings.SettingsError: naming the variable and its value.
    """
    if source is None:
        source = settings.source_name()
    elif source not in settings.SOURCE_NAMES:
        return  # run() refuses it with its own one-line message
    settings.partition_start()
    settings.window_days(source)
    settings.history_days(source)
    from factory_assets.platform.executors import MissingExecutorPackage, executor_for

    try:
        executor_for()  # celery / k8s: is the integration package installed?
    except MissingExecutorPackage as exc:
        raise settings.SettingsError(str(exc)) from exc
    settings.als_gpu()
    settings.slot_wait_seconds()
    settings.storage_name()
    settings.parallel_runs()


def _dispatch(args) -> int:
    from factory_assets.ml import models_cli
    from factory_assets.serving import serve_cli as service_cli

    for flag, variable in (("executor", "FACTORY_EXECUTOR"), ("storage", "FACTORY_STORAGE")):
        if getattr(args, flag, None):  # read by the definitions (executor) and the resources (storage)
            os.environ[variable] = getattr(args, flag)
    if args.command in ("run", "demo", "dev"):
        check_settings(getattr(args, "source", None))
    if args.command == "dev":
        return dev(args.extra)
    if args.command == "models":
        return models_cli.main(args)
    if args.command == "serve":
        return service_cli.main(args)
    from factory_assets.platform import runguard

    try:
        if args.command == "demo":
            return demo(args)
        summary = run(args)
    except SystemExit as exc:  # a refused input: exit status 2; with --json, stdout still carries one document
        if isinstance(exc.code, str):
            return _refuse(exc.code, args.json)
        raise
    except (runguard.SlotWaitTimeout, TimeoutError) as exc:  # an error, not a refusal: exit 1, one line
        _refuse(f"factory: {exc}", args.json)
        return 1
    _emit(summary, args.json)
    return exit_code(summary)

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
