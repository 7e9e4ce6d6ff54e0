"""What keeps a home usable when an operator kills, stops or doubles a ``factory run``.

Dagster's own answers need its daemon (run monitoring, see ``dagster.yaml``); ``factory run`` executes jobs in
its own process and has no daemon, so it does the same work itself, here:

- :func:`home_lock`: one ``factory run`` per home.  An exclusive ``flock`` on ``<home>/.factory-run.lock``;
  the kernel drops it when the holder dies, even by SIGKILL, so it can never be left stale.
- :func:`open_instance`: the Dagster instance is created (and its SQLite schemas stamped) under an exclusive
  lock on ``<DAGSTER_HOME>/.instance.lock``: two first runs at once used to write two ``alembic_version``
  rows, after which no run could start.
- :func:`reap_dead_runs`: a run whose worker process is gone (killed) is marked failed with the reason, and
  every pool slot held or queued by a run that is no longer running is freed.  Without it the killed run's
  claim on the single ``warehouse`` slot blocked every later run forever.
- :func:`wait_for_pool`: before a run starts, wait for the pool's slot with one message naming its holder,
  and give up after a bounded time (:class:`SlotWaitTimeout`).
- :class:`StopSignals`: SIGTERM and SIGINT stop ``factory run`` at the next step boundary (a step's partition
  write commits or rolls back), within a grace period after which the process exits anyway: what is stored
  survives a SIGKILL too (atomic partition writes, atomic artefact files), so a forced exit loses nothing.

Every function logs through the standard ``logging`` module; none imports the factory's assets.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger("factory")

HOME_LOCK = ".factory-run.lock"
INSTANCE_LOCK = ".instance.lock"
PID_TAG = "factory/pid"  # the process that executes the run (factory run executes in process)
HOST_TAG = "factory/host"
INSTANCE_LOCK_TIMEOUT_S = 120.0
STOP_GRACE_S = 15.0  # after SIGTERM/SIGINT: how long the current step may take to stop before a forced exit


class HomeInUse(RuntimeError):
    """Another live ``factory run`` holds this home (the message names its pid and start time)."""


class SlotWaitTimeout(RuntimeError):
    """A pool's slot stayed taken by another live run for longer than the allowed wait."""


class Stopped(RuntimeError):
    """SIGTERM or SIGINT asked ``factory run`` to stop (``signum`` says which)."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def exit_status(signum: int) -> int:
    """The shell's convention for a process ended by ``signum``: 128 + signum (SIGINT 130, SIGTERM 143)."""
    return 128 + int(signum)


# --------------------------------------------------------------------------- locks
def _open_lock(path: Path) -> int:
    """Open (creating) a lock file; PermissionError/OSError propagate with the path in the message."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


def _try_flock(fd: int) -> bool:
    """Take an exclusive ``flock`` on ``fd`` without blocking; False when another process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise
        return False


@contextmanager
def home_lock(home: Path) -> Iterator[None]:
    """Hold ``<home>/.factory-run.lock`` exclusively for the block (non-blocking).

    Raises:
        HomeInUse: another live process holds it; the message names its pid and since when (UTC).
        PermissionError: the home is not writable.
    """
    path = Path(home) / HOME_LOCK
    fd = _open_lock(path)
    try:
        if not _try_flock(fd):
            try:
                holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
            except (ValueError, OSError):
                holder = {}
            raise HomeInUse(
                f"the home {home} is in use by another factory run (pid {holder.get('pid', '?')}, started "
                f"{holder.get('started', '?')}); wait for it to finish, or use another --home"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "started": _utc_now()}).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing drops the flock


@contextmanager
def _blocking_lock(path: Path, timeout_s: float, what: str) -> Iterator[None]:
    fd = _open_lock(path)
    deadline = time.monotonic() + timeout_s
    try:
        while not _try_flock(fd):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: {path} stayed locked for {timeout_s:.0f} s")
            time.sleep(0.1)
        yield
    finally:
        os.close(fd)


def open_instance(dagster_home: Path):
    """The Dagster instance of ``dagster_home``, its storages created or checked under an exclusive file lock.

    Touches the run, event-log (with its concurrency tables) and schedule storages while holding
    ``<dagster_home>/.instance.lock``, so that the first use of a fresh home stamps each SQLite schema once,
    however many ``factory`` processes (or ``dagster dev``) start together.

    Returns:
        ``dagster.DagsterInstance`` (``DagsterInstance.get()``; ``DAGSTER_HOME`` must name ``dagster_home``).
    Raises:
        TimeoutError: another process held the lock for over 120 s.
    """
    from dagster import DagsterInstance

    with _blocking_lock(Path(dagster_home) / INSTANCE_LOCK, INSTANCE_LOCK_TIMEOUT_S, "creating the Dagster instance"):
        instance = DagsterInstance.get()
        instance.get_runs(limit=1)
        instance.event_log_storage.get_concurrency_keys()
        instance.all_instigator_state()
    return instance


# --------------------------------------------------------------------------- dead runs and their slots
def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _process_start_epoch(pid: int) -> float | None:
    """When ``pid`` started (seconds since the epoch, Linux ``/proc``); None where that cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # field 22 of stat: starttime in clock ticks after boot
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError, StopIteration):
        return None


def _process_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def process_alive(pid: int, since: float | None = None) -> bool:
    """Is ``pid`` a live process that started no later than ``since`` (epoch seconds, with 5 s of slack)?

    A zombie counts as dead; so does a live process that started after ``since`` (the pid was reused).
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    if _process_state(pid) == "Z":
        return False
    started = _process_start_epoch(pid)
    return not (since is not None and started is not None and started > since + 5)


def run_worker_pid(instance, run) -> int | None:
    """The pid of the process executing ``run``: the ``factory/pid`` tag, else the in-process executor's
    engine event ("Executing steps in process (pid: N)"), for runs of a local (SQLite) instance only."""
    if PID_TAG in run.tags:
        if run.tags.get(HOST_TAG, socket.gethostname()) != socket.gethostname():
            return None  # executed on another host: its own run monitoring judges it
        return int(run.tags[PID_TAG])
    from dagster import DagsterEventType
    from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage

    if not isinstance(instance.run_storage, SqliteRunStorage):
        return None
    records = instance.get_records_for_run(run.run_id, of_type=DagsterEventType.ENGINE_EVENT, ascending=False, limit=50)
    for record in records.records:
        data = record.event_log_entry.dagster_event.event_specific_data
        metadata = getattr(data, "metadata", None) or {}
        if "pid" in metadata:
            return int(metadata["pid"].value)
    return None


def reap_dead_runs(instance, pools: tuple[str, ...]) -> list[dict]:
    """Mark runs whose worker process is gone as failed, and free every slot of runs that are not running.

    A run counts as dead when it is STARTING, STARTED or CANCELING (or NOT_STARTED with a ``factory/pid`` tag:
    killed between its creation and its start) and :func:`run_worker_pid` names a process that is no longer
    alive (or was reused).  Its failure event says why.  Then, for each pool in ``pools``,
    slots claimed or queued by runs that are finished, dead or unknown are freed (Dagster's run monitoring
    does this under the daemon: ``free_slots_after_run_end_seconds``).

    Returns:
        ``[{"run_id", "job", "partition", "pid", "action"}]``, one per run touched.
    """
    from dagster import DagsterRunStatus, RunsFilter

    touched = []
    active = [DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]
    for run in instance.get_runs(filters=RunsFilter(statuses=active)):
        if run.status == DagsterRunStatus.NOT_STARTED and PID_TAG not in run.tags:
            continue  # created by a daemon or the UI, not yet launched: not ours to judge
        pid = run_worker_pid(instance, run)
        record = instance.get_run_record_by_id(run.run_id)
        since = record.start_time or record.create_timestamp.timestamp() if record else None
        if pid is None or pid == os.getpid() or process_alive(pid, since):
            continue
        message = (f"run worker process {pid} is gone (killed or crashed); marked failed by factory run "
                   f"(pid {os.getpid()}) at {_utc_now()}")
        instance.report_run_failed(run, message)
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        touched.append({"run_id": run.run_id, "job": run.job_name, "partition": run.tags.get("dagster/partition"),
                        "pid": pid, "action": "marked failed"})
        log.warning("%s %s (run %s): %s", run.job_name, run.tags.get("dagster/partition", ""), run.run_id, message)
    for pool in pools:
        info = instance.event_log_storage.get_concurrency_info(pool)
        holders = {s.run_id for s in info.claimed_slots} | {s.run_id for s in info.pending_steps}
        for run_id in holders:
            run = instance.get_run_by_id(run_id)
            if run is not None and not run.is_finished:
                continue
            instance.event_log_storage.free_concurrency_slots_for_run(run_id)
            touched.append({"run_id": run_id, "job": getattr(run, "job_name", None), "pid": None,
                            "partition": run.tags.get("dagster/partition") if run else None, "action": f"freed {pool}"})
            log.warning("pool %s: freed the slot of run %s (%s)", pool, run_id,
                        "not in this instance" if run is None else run.status.value)
    return touched


def _holder_text(instance, info) -> str:
    """Who holds ``info``'s pool: each claimed slot's run (job, partition, step), then the runs queued first."""
    def describe(run_id: str, step_key: str) -> str:
        run = instance.get_run_by_id(run_id)
        what = f"{run.job_name} {run.tags.get('dagster/partition', '')}".strip() if run else "unknown run"
        return f"run {run_id} ({what}, step {step_key})"

    held = [describe(s.run_id, s.step_key) for s in info.claimed_slots]
    claimed = {(s.run_id, s.step_key) for s in info.claimed_slots}
    queued = [describe(p.run_id, p.step_key) for p in info.pending_steps
              if p.assigned_timestamp is None and (p.run_id, p.step_key) not in claimed]
    text = ", ".join(held) or "no run yet"
    if queued:
        text += "; queued before it: " + ", ".join(queued)
    return text


def wait_for_pool(instance, pool: str, timeout_s: float, stop: "StopSignals | None" = None, poll_s: float = 1.0) -> float:
    """Block until ``pool`` has a free slot and no other run queued for it; return the seconds waited.

    Logs one WARNING naming the holder when it has to wait; reaps dead runs while waiting.

    Raises:
        SlotWaitTimeout: still taken after ``timeout_s`` seconds (the message names the holder).
        Stopped: ``stop`` caught SIGTERM/SIGINT while waiting.
    """
    started = time.monotonic()
    told = False
    while True:
        if stop is not None:
            stop.raise_if_requested()
        info = instance.event_log_storage.get_concurrency_info(pool)
        limit = info.slot_count if info.slot_count else (info.limit or 0)
        if not limit or (len(info.claimed_slots) < limit and not info.pending_steps):
            return time.monotonic() - started
        waited = time.monotonic() - started
        if waited > timeout_s:
            raise SlotWaitTimeout(
                f"gave up after {timeout_s:.0f} s waiting for pool {pool!r}: held by {_holder_text(instance, info)}; "
                "stop that run or wait for it, then run again (FACTORY_SLOT_WAIT_S sets the wait)")
        if not told:
            log.warning("waiting for pool %r (%d slot): held by %s; giving up after %.0f s",
                        pool, limit, _holder_text(instance, info), timeout_s)
            told = True
        reap_dead_runs(instance, (pool,))
        time.sleep(poll_s)


@contextmanager
def slot_watchdog(instance, pool: str, run_id: str, timeout_s: float, on_timeout: Callable[[str], None],
                  poll_s: float = 2.0) -> Iterator[None]:
    """Bound the time a run in progress waits inside Dagster for ``pool``'s slot.

    :func:`wait_for_pool` checks before a run starts, but another process (automation under ``dagster dev``) may
    take the slot in between; Dagster's in-process executor then waits without limit and ignores interrupts.
    A thread watches the pool while the block runs: when a step of ``run_id`` has been queued for the slot for
    ``timeout_s`` seconds, it logs one ERROR naming the holder and calls ``on_timeout(message)`` (which should
    fail the run, free its slots and end the process).  Logs one WARNING when the step starts waiting.
    """
    done = threading.Event()

    def watch() -> None:
        since, told = None, False
        while not done.wait(poll_s):
            try:
                info = instance.event_log_storage.get_concurrency_info(pool)
                queued = [p for p in info.pending_steps if p.run_id == run_id and p.assigned_timestamp is None]
                if not queued:
                    since = None
                    continue
                since = since or time.monotonic()
                if not told:
                    log.warning("run %s waits for pool %r: held by %s; giving up after %.0f s", run_id, pool,
                                _holder_text(instance, info), timeout_s)
                    told = True
                if time.monotonic() - since > timeout_s and not done.is_set():
                    message = (f"gave up after {timeout_s:.0f} s waiting for pool {pool!r} in run {run_id}: held by "
                               f"{_holder_text(instance, info)} (FACTORY_SLOT_WAIT_S sets the wait)")
                    log.error("%s", message)
                    on_timeout(message)
                    return
            except Exception as exc:  # noqa: BLE001 - a watchdog never takes the run down by itself
                log.debug("slot watchdog: %s", exc)

    thread = threading.Thread(target=watch, name="factory-slot-watchdog", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()


def abandon_run(instance, run_id: str, message: str) -> None:
    """Report ``run_id`` FAILED with ``message`` (unless it already ended) and free its pool slots."""
    run = instance.get_run_by_id(run_id)
    if run is not None and not run.is_finished:
        instance.report_run_failed(run, message)
    instance.event_log_storage.free_concurrency_slots_for_run(run_id)


# --------------------------------------------------------------------------- SIGTERM / SIGINT
class StopSignals:
    """Turn SIGTERM and SIGINT into a stop at the next step boundary, for the block.

    Dagster swaps the Python signal handlers while it executes a run (it interrupts the running step at its
    next Python instruction and rolls the run to CANCELED/FAILED); a wake-up file descriptor
    (``signal.set_wakeup_fd``) lets a watcher thread see every signal whichever handler is installed.  The
    watcher marks the current run CANCELING at once, and if the main thread has not come back within
    ``grace_s`` seconds (a step blocked in Dagster's pool wait, which ignores interrupts, or a long native
    call), it reports the run canceled, frees its slots, calls ``on_forced_exit`` and ends the process with
    128 + signum.
    """

    def __init__(self, grace_s: float = STOP_GRACE_S, on_forced_exit: Callable[[int], None] | None = None):
        self.grace_s = grace_s
        self.on_forced_exit = on_forced_exit
        self.signum: int | None = None
        self.instance = None
        self.run_id: str | None = None
        self._received = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()

    # main thread ---------------------------------------------------------
    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is not threading.main_thread():
            return self
        self._r, self._w = socket.socketpair()
        self._r.setblocking(True)
        self._w.setblocking(False)
        self._old_fd = signal.set_wakeup_fd(self._w.fileno(), warn_on_full_buffer=False)
        self._old = {s: signal.signal(s, self._handler) for s in (signal.SIGTERM, signal.SIGINT)}
        self._thread = threading.Thread(target=self._watch, name="factory-stop-watcher", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        self._done.set()
        signal.set_wakeup_fd(self._old_fd)
        for s, handler in self._old.items():
            signal.signal(s, handler)
        try:
            self._w.send(b"\0")  # wake the watcher so it ends
        except OSError:
            pass
        self._thread.join(timeout=2)
        self._r.close()
        self._w.close()

    def _handler(self, signum, frame) -> None:  # outside Dagster's runs: note it; the loop stops at its next check
        self._note(signum)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def raise_if_requested(self) -> None:
        if self.signum is not None:
            raise Stopped(self.signum)

    @contextmanager
    def running(self, instance, run_id: str) -> Iterator[None]:
        """Mark ``run_id`` as the run in progress (for the watcher) during the block."""
        with self._lock:
            self.instance, self.run_id = instance, run_id
        try:
            yield
        finally:
            with self._lock:
                self.run_id = None

    # watcher thread ------------------------------------------------------
    def _note(self, signum: int) -> None:
        if signum not in (signal.SIGTERM, signal.SIGINT) or self._received.is_set():
            return
        self.signum = signum
        self._received.set()

    def _watch(self) -> None:
        while not self._done.is_set():
            try:
                data = self._r.recv(64)
            except OSError:
                return
            if self._done.is_set() or not data:
                return
            for signum in data:
                if signum in (signal.SIGTERM, signal.SIGINT) and not self._received.is_set():
                    self._note(signum)
                    threading.Thread(target=self._stop, name="factory-stop", daemon=True).start()

    def _stop(self) -> None:
        name = signal.Signals(self.signum).name
        log.warning("%s received: stopping; the running step is interrupted and its partition write rolled back "
                    "(forced exit in %.0f s)", name, self.grace_s)
        with self._lock:
            instance, run_id = self.instance, self.run_id
        if instance is not None and run_id is not None:
            try:
                run = instance.get_run_by_id(run_id)
                if run is not None and not run.is_finished:
                    instance.report_run_canceling(run, message=f"factory run received {name}")
            except Exception as exc:  # noqa: BLE001 - best effort; the forced exit below still frees the slot
                log.warning("could not mark run %s canceling: %s", run_id, exc)
        if self._done.wait(self.grace_s):
            return
        with self._lock:
            run_id = self.run_id
        log.error("the current step did not stop within %.0f s of %s: exiting now (uncommitted writes roll back)",
                  self.grace_s, name)
        if instance is not None and run_id is not None:
            try:
                finish_canceled(instance, run_id, f"factory run stopped by {name} (forced after {self.grace_s:.0f} s)")
            except Exception as exc:  # noqa: BLE001
                log.warning("could not mark run %s canceled: %s", run_id, exc)
        if self.on_forced_exit is not None:
            try:
                self.on_forced_exit(self.signum)
            except Exception as exc:  # noqa: BLE001
                log.warning("summary on forced exit failed: %s", exc)
        logging.shutdown()
        os._exit(exit_status(self.signum))


def finish_canceled(instance, run_id: str, message: str) -> None:
    """Report ``run_id`` CANCELED (unless it is already, or it succeeded) and free every pool slot it holds or
    waits for."""
    from dagster import DagsterRunStatus

    run = instance.get_run_by_id(run_id)
    if run is not None and run.status not in (DagsterRunStatus.CANCELED, DagsterRunStatus.SUCCESS):
        instance.report_run_canceled(run, message=message)
    instance.event_log_storage.free_concurrency_slots_for_run(run_id)
