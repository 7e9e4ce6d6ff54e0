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
then all present.  Candidates are trained one day after another: each is gated against the previous champion.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
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
INGEST_PHASES: tuple[tuple[str, ...], ...] = (DAY_LOCAL, LOOKBACK)


def execute_partition(job_name: str, day: str, run_config: dict, tags: dict, selection: Sequence[str] | None) -> dict:
    """Execute one partition's run of ``job_name`` with the definitions' executor (in a launcher process).

    Returns ``{"job", "partition", "run_id", "success", "outcome", "error"?, "verdict"?}`` (plain data: it
    crosses the process boundary); ``verdict`` is the candidate's decision of a training run (see
    :func:`factory_assets.cli._verdict`).
    """
    warnings.filterwarnings("ignore", message=r".*is currently in (preview|beta).*")  # as factory's main does
    from dagster import AssetKey, DagsterInstance, execute_job, reconstructable

    from factory_assets import cli, definitions
    from factory_assets.platform import runguard

    target = {definitions.INGEST_JOB: definitions.ingest_job, definitions.TRAINING_JOB: definitions.training_job}
    tags = {**tags, "dagster/partition": day, runguard.PID_TAG: str(os.getpid()), runguard.HOST_TAG: socket.gethostname()}
    keys = [AssetKey.from_user_string(k) for k in selection] if selection else None
    with DagsterInstance.get() as instance:
        result = execute_job(reconstructable(target[job_name]), instance, run_config=run_config, tags=tags,
                             asset_selection=keys, raise_on_error=False)
        row = {"job": job_name, "partition": day, "run_id": result.run_id, "success": result.success,
               "outcome": cli._outcome(result)}
        if row["outcome"] == "error":
            row["error"] = cli._failure(result) or _run_failure(instance, result.run_id)
        if job_name == definitions.TRAINING_JOB:
            row["verdict"] = cli._verdict(result, date.fromisoformat(day), row)
    return row


def _run_failure(instance, run_id: str) -> str:
    """The run's own failure message (a run that failed outside any step, e.g. its executor could not start)."""
    from dagster import DagsterEventType

    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.RUN_FAILURE).records
    return records[-1].event_log_entry.message if records else "run failed"


def run_days(job_name: str, days: Sequence[date], run_config: dict, tags: dict, parallel: int,
             selection: Sequence[str] | None = None, stopped: Callable[[], bool] = lambda: False,
             on_row: Callable[[dict], None] = lambda row: None) -> list[dict]:
    """One run of ``job_name`` per day, at most ``parallel`` at once, in launcher processes (spawned: a fresh
    interpreter per launcher, the definitions loaded with this process's environment, e.g. ``FACTORY_EXECUTOR``).

    ``stopped()`` is asked before each launch and while runs are in flight: once true no further run starts and
    the launchers get SIGINT, which Dagster turns into a canceled run (its executor stops the run's steps; a
    partition write in flight is not published).  ``on_row`` gets each run's row as it ends.  Returns the rows in
    the order the runs ended.
    """
    rows: list[dict] = []
    pending = list(days)
    context = multiprocessing.get_context("spawn")
    interrupted = False
    with ProcessPoolExecutor(max_workers=max(1, min(parallel, len(days))), mp_context=context) as pool:
        running: dict[Future, date] = {}
        while pending or running:
            while pending and len(running) < parallel and not stopped():
                day = pending.pop(0)
                running[pool.submit(execute_partition, job_name, day.isoformat(), run_config, tags,
                                    list(selection) if selection else None)] = day
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
                day = running.pop(future)
                try:
                    row = future.result()
                except Exception as exc:  # the launcher itself died (killed, out of memory): no run row of its own
                    row = {"job": job_name, "partition": day.isoformat(), "run_id": None, "success": False,
                           "outcome": "error", "error": f"launcher failed: {type(exc).__name__}: {exc}"}
                if interrupted and row["outcome"] == "error":
                    row.update(outcome="canceled", error=f"canceled ({row.get('error')})")
                rows.append(row)
                on_row(row)
    return rows
