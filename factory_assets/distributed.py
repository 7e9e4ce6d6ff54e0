"""``factory run --executor multiprocess|celery|k8s``: the same runs as in-process, launched in parallel.

``factory run`` (in-process, the default) executes one run after another with ``execute_in_process``: every step
in the launching process.  With another executor each run is executed by :func:`dagster.execute_job` from a
pool of launcher processes (:func:`run_days`), so the run's steps go to the executor (Celery workers, a process
per step, Kubernetes Jobs) and several days' runs are in flight at once.  That pays only on a warehouse that
lets several steps write different partitions at once: the ``parquet`` storage (``FACTORY_STORAGE=parquet``,
:mod:`factory_assets.feature_store.storage`) with a ``warehouse`` pool limit above 1 (the local cluster's
``dagster.yaml``).  On the DuckDB file the pool (limit 1) still keeps one writer at a time.

The ingest of a range is two *phases* so that parallel days give the same partitions as one day after another:
the day-local assets of every day (:data:`DAY_LOCAL`: each reads its own day only), then the assets that read
earlier days (:data:`LOOKBACK`: ``item_features`` reads 7 days of ``item_daily``, ``behaviour_drift`` 29), by
then all present.  Each phase runs *ranges* of days (the DataOps assets' single-run backfill policy: one run,
one step per asset, every day of the range in order inside it; :func:`chunks`): the day-local phase as one
contiguous range per run in flight, the look-back phase as one run over the whole range, its steps in
parallel.  Fewer, longer runs: a run's own cost (plan, launch, a task per step) is paid once per range, not
once per day.  Candidates are trained one day after another: each is gated against the previous champion.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from datetime import date

from factory_assets.platform.keys import (
    BEHAVIOUR_DRIFT,
    ITEM_DAILY,
    ITEM_FEATURES,
    ONLINE_FEATURES,
    RAW_EVENTS,
    USER_FEATURES,
    USER_ITEM_DAILY,
)

log = logging.getLogger("factory")

DAY_LOCAL: tuple[str, ...] = (RAW_EVENTS, USER_ITEM_DAILY, ITEM_DAILY, USER_FEATURES)
LOOKBACK: tuple[str, ...] = (ITEM_FEATURES, ONLINE_FEATURES, BEHAVIOUR_DRIFT)


def chunks(days: Sequence[date], n: int) -> list[list[date]]:
    """``days`` (consecutive, ascending) cut into at most ``n`` contiguous ranges of near-equal length, in order."""
    n = max(1, min(n, len(days)))
    size, extra = divmod(len(days), n)
    out, start = [], 0
    for k in range(n):
        end = start + size + (1 if k < extra else 0)
        out.append(list(days[start:end]))
        start = end
    return out


def execute_partition(job_name: str, day: str, run_config: dict, tags: dict, selection: Sequence[str] | None,
                      last_day: str | None = None) -> dict:
    """Execute one run of ``job_name`` with the definitions' executor (in a launcher process): the partition
    ``day``, or the range ``day..last_day`` (inclusive) as one run.

    Returns ``{"job", "partition", "days", "run_id", "success", "outcome", "error"?, "verdict"?}`` (plain data: it
    crosses the process boundary); ``partition`` is ``day`` or ``"day...last_day"``, ``days`` every ISO day of the
    run; ``verdict`` is the candidate's decision of a training run (see :func:`factory_assets.cli._verdict`).
    """
    warnings.filterwarnings("ignore", message=r".*is currently in (preview|beta).*")  # as factory's main does
    from dagster import AssetKey, DagsterInstance, execute_job, reconstructable

    from factory_assets import cli, definitions
    from factory_assets.platform import runguard

    target = {definitions.INGEST_JOB: definitions.ingest_job, definitions.TRAINING_JOB: definitions.training_job}
    if last_day is None or last_day == day:
        partition, span = {"dagster/partition": day}, [day]
    else:
        partition = {"dagster/asset_partition_range_start": day, "dagster/asset_partition_range_end": last_day}
        first, last = date.fromisoformat(day), date.fromisoformat(last_day)
        span = [date.fromordinal(d).isoformat() for d in range(first.toordinal(), last.toordinal() + 1)]
    tags = {**tags, **partition, runguard.PID_TAG: str(os.getpid()), runguard.HOST_TAG: socket.gethostname()}
    keys = [AssetKey.from_user_string(k) for k in selection] if selection else None
    with DagsterInstance.get() as instance:
        result = execute_job(reconstructable(target[job_name]), instance, run_config=run_config, tags=tags,
                             asset_selection=keys, raise_on_error=False)
        row = {"job": job_name, "partition": day if len(span) == 1 else f"{day}...{last_day}", "days": span,
               "run_id": result.run_id, "success": result.success, "outcome": cli._outcome(result)}
        if row["outcome"] == "error":
            row["error"] = (cli._failure(result) if result.get_step_failure_events()
                            else _run_failure(instance, result.run_id))
        if job_name == definitions.TRAINING_JOB:
            row["verdict"] = cli._verdict(result, date.fromisoformat(day), row)
    return row


def _run_failure(instance, run_id: str) -> str:
    """Why a run failed outside any step (its executor could not start, the instance's storage refused a write):
    the innermost error of its failure event, in one line."""
    from dagster import DagsterEventType

    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.RUN_FAILURE).records
    if not records:
        return "the run failed (no failure event; see the Dagster run log)"
    event = records[-1].event_log_entry.dagster_event
    error = getattr(event.event_specific_data, "error", None)
    while error is not None and error.cause is not None:
        error = error.cause
    if error is None:
        return records[-1].event_log_entry.message or "the run failed"
    return f"run: {error.cls_name}: {(error.message.strip().splitlines() or [''])[0]}"


ORPHAN_GRACE_S = 30.0  # a launcher outliving its factory run: time for Dagster to cancel its run, then exit


def _stop_with_parent(parent_pid: int) -> None:
    """Launcher start-up: when the launching ``factory run`` dies, even by SIGKILL, the run in flight is canceled
    (SIGINT, Linux's ``PR_SET_PDEATHSIG``) instead of writing on outside the home's lock, and the launcher exits
    :data:`ORPHAN_GRACE_S` seconds later (an idle pool process would otherwise wait for work forever: its
    siblings keep the task pipe open)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGINT)  # 1 = PR_SET_PDEATHSIG

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        if not sys.platform.startswith("linux"):
            os.kill(os.getpid(), signal.SIGINT)
        time.sleep(ORPHAN_GRACE_S)
        os._exit(1)

    threading.Thread(target=watch, name="factory-launcher-orphan-watch", daemon=True).start()


def run_days(job_name: str, days: Sequence[date] | Sequence[Sequence[date]], run_config: dict, tags: dict,
             parallel: int, selection: Sequence[str] | None = None, stopped: Callable[[], bool] = lambda: False,
             on_row: Callable[[dict], None] = lambda row: None) -> list[dict]:
    """One run of ``job_name`` per day, or per range when ``days`` holds lists of consecutive days (:func:`chunks`),
    at most ``parallel`` at once, in launcher processes (spawned: a fresh interpreter per launcher, the
    definitions loaded with this process's environment, e.g. ``FACTORY_EXECUTOR``).

    ``stopped()`` is asked before each launch and while runs are in flight: once true no further run starts and
    the launchers get SIGINT, which Dagster turns into a canceled run (its executor stops the run's steps; a
    partition write in flight is not published).  ``on_row`` gets each run's row as it ends.  Returns the rows in
    the order the runs ended.
    """
    rows: list[dict] = []
    pending = [list(d) if isinstance(d, (list, tuple)) else [d] for d in days]
    context = multiprocessing.get_context("spawn")
    interrupted = False
    with ProcessPoolExecutor(max_workers=max(1, min(parallel, len(days))), mp_context=context,
                             initializer=_stop_with_parent, initargs=(os.getpid(),)) as pool:
        running: dict[Future, list[date]] = {}
        while pending or running:
            while pending and len(running) < parallel and not stopped():
                span = pending.pop(0)
                running[pool.submit(execute_partition, job_name, span[0].isoformat(), run_config, tags,
                                    list(selection) if selection else None, span[-1].isoformat())] = span
            if not running:
                break
            done, _ = wait(running, timeout=1.0, return_when=FIRST_COMPLETED)
            if stopped() and not interrupted:
                interrupted = True
                for process in list(getattr(pool, "_processes", {}).values()):  # the launchers (no public handle)
                    try:
                        os.kill(process.pid, signal.SIGINT)
                    except ProcessLookupError:
                        pass
            for future in done:
                span = running.pop(future)
                try:
                    row = future.result()
                except Exception as exc:  # the launcher itself died (killed, out of memory): no run row of its own
                    name = span[0].isoformat() if len(span) == 1 else f"{span[0]}...{span[-1]}"
                    row = {"job": job_name, "partition": name, "days": [d.isoformat() for d in span], "run_id": None,
                           "success": False, "outcome": "error",
                           "error": f"launcher failed: {type(exc).__name__}: {exc}"}
                if interrupted and row["outcome"] == "error":
                    row.update(outcome="canceled", error=f"canceled ({row.get('error')})")
                rows.append(row)
                on_row(row)
    return rows
