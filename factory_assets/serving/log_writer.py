"""The served log and impressions: a background thread (and by default a forked child process) writing them.

Every answer is queued (:meth:`LogWriter.submit`, a :class:`Served`) for a background thread that (1) scores the
shadow model, when one is loaded, on the same request (never on the response path), (2) writes both lists to
``<home>/<source>/served_log/`` with :func:`factory_assets.ml.served_log.write_log_file` in batches (the files
that module reads back), and (3) writes the champion's lists as *impression events* into the folder source's
landing directory (when configured): one ``view`` event per shown item, ``event_id =
"imp-<request_id>-<position>"``, quantity 1, value 0.  The event schema has no impression type; ``view`` is the
closest (the item was put in front of the user), and the ``imp-`` prefix lets any consumer tell impressions from
organic views.  Impression files are Parquet, written as ``.<name>.part`` and renamed, so the folder source never
reads half a file.
"""

from __future__ import annotations

import io
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd

from factory_assets.ml import registry
from factory_assets.ml import served_log as serving_log
from factory_assets.ml.recsys.artefact import atomic_write_bytes
from factory_assets.serving.config import ServiceConfig
from factory_assets.serving.metrics import Metrics
from factory_assets.serving.scorer import LoadedModel, Recommendation

log = logging.getLogger("factory.serve")


@dataclass(frozen=True)
class Served:
    """One answer, as queued for the log thread."""

    request_id: str
    ts: datetime  # timezone-aware, as ``ServiceConfig.clock`` returns it (converted in the log thread)
    lists: list[Recommendation]
    champion: LoadedModel
    shadow: LoadedModel | None
    k: int
    exclude_purchased: bool


def write_impressions(columns: dict, landing_dir: Path) -> Path:
    """Write impression events (event-schema columns) as one Parquet file, atomically (``.name.part``, rename)."""
    frame = pd.DataFrame(columns, columns=["event_id", "user_id", "item_id", "event_type", "ts", "quantity", "value"])
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True).astype("datetime64[us, UTC]")
    frame = frame.astype({"quantity": "int64", "value": "float64"})
    first = frame["ts"].min()
    name = f"impressions_{first:%Y%m%dT%H%M%S%f}_{uuid.uuid4().hex[:12]}.parquet"
    landing_dir.mkdir(parents=True, exist_ok=True)
    final = landing_dir / name
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False, engine="pyarrow")
    atomic_write_bytes(final, buffer.getvalue())  # a hidden .tmp first: the folder source never reads half a file
    return final


LOG_FIELDS = ("request_id", "ts", "user_id", "model_version", "role", "item_id", "position", "score")
IMPRESSION_FIELDS = ("event_id", "user_id", "item_id", "ts")


def write_batch(log_cols: dict, imp_cols: dict, served_dir: Path, landing_dir: Path | None) -> tuple[int, int]:
    """Write one batch (column lists; ``ts`` as int64 ns since the epoch, UTC); return ``(log rows, errors)``."""
    rows = errors = 0
    if log_cols["request_id"]:
        try:
            frame = pd.DataFrame(log_cols)
            frame["ts"] = pd.to_datetime(frame["ts"], unit="ns", utc=True)
            serving_log.write_log_file(frame, served_dir)
            rows = len(frame)
        except Exception:
            log.exception("served-log: writing %d rows failed", len(log_cols["request_id"]))
            errors += 1
    if imp_cols["event_id"] and landing_dir is not None:
        try:
            n = len(imp_cols["event_id"])
            write_impressions({**imp_cols, "ts": pd.to_datetime(imp_cols["ts"], unit="ns", utc=True),
                               "event_type": ["view"] * n, "quantity": [1] * n, "value": [0.0] * n}, landing_dir)
        except Exception:
            log.exception("impressions: writing %d events failed", len(imp_cols["event_id"]))
            errors += 1
    return rows, errors


def _writer_process(jobs, acks, served_dir: Path, landing_dir: Path | None) -> None:
    """Child process: Parquet encoding and validation (pandas holds the GIL) never stall request handling."""
    while True:
        job = jobs.get()
        if job is None:
            return
        token, log_cols, imp_cols = job
        acks.put((token, *write_batch(log_cols, imp_cols, served_dir, landing_dir)))


class LogWriter:
    """Background thread: scores the shadow off the response path, then batches the served log and impressions.

    The thread wakes every ``ServiceConfig.drain_interval_s`` (and on :meth:`flush`) and handles everything
    queued since, rather than waking for each request: a per-request wake-up would hand the GIL to this thread
    in the middle of the next request.  With ``ServiceConfig.log_process`` (the default for ``factory
    serve``) the batches are encoded and written by a forked child process, so pandas/pyarrow work does not
    hold the server's GIL; otherwise in this thread.
    """

    def __init__(self, config: ServiceConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.queue: queue.SimpleQueue[Served | None] = queue.SimpleQueue()
        self._log = {f: [] for f in LOG_FIELDS}
        self._imp = {f: [] for f in IMPRESSION_FIELDS}
        self._thread = threading.Thread(target=self._run, name="serve-log-writer", daemon=True)
        self._flush_now = threading.Event()
        self._flushed = threading.Event()
        self._wake = threading.Event()
        self._stopping = False
        self._process = None
        self._pending: set[int] = set()
        self._token = 0

    def start(self) -> None:
        if self.config.log_process:
            import multiprocessing

            ctx = multiprocessing.get_context("fork")
            self._jobs, self._acks = ctx.Queue(), ctx.Queue()
            self._process = ctx.Process(
                target=_writer_process, name="serve-log-process", daemon=True,
                args=(self._jobs, self._acks, serving_log.log_directory(self.config.layout.root), self.config.landing_dir),
            )
            self._process.start()
        self._thread.start()

    def submit(self, item: Served) -> None:
        self.queue.put(item)

    def flush(self, timeout: float = 30.0) -> None:
        """Process everything queued so far and write it (blocks until written; for tests and shutdown)."""
        if not self._thread.is_alive():
            self._drain()
            self._write()
            self._wait_acks(timeout)
            return
        self._flushed.clear()
        self._flush_now.set()
        self._wake.set()
        self._flushed.wait(timeout)

    def stop(self) -> None:
        if self._thread.is_alive():
            self.flush()
            self._stopping = True
            self._wake.set()
            self._thread.join(5)
        if self._process is not None:
            self._jobs.put(None)
            self._process.join(10)
            if self._process.is_alive():
                self._process.kill()
            self._process = None

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stopping:
            self._wake.wait(min(self.config.drain_interval_s, self.config.flush_interval_s))
            self._wake.clear()
            self._drain()
            self._wait_acks(0)
            due = time.monotonic() - last >= self.config.flush_interval_s
            if self._flush_now.is_set() or due or len(self._log["request_id"]) >= self.config.flush_rows:
                self._write()
                last = time.monotonic()
                if self._flush_now.is_set():
                    self._wait_acks(30.0)
                    self._flush_now.clear()
                    self._flushed.set()

    def _drain(self) -> None:
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                self._handle(item)

    def _handle(self, item: Served) -> None:
        try:
            ts = pd.Timestamp(item.ts).tz_convert("UTC").value  # int64 ns since the epoch
            self._add(item, ts, registry.CHAMPION, item.champion.version, item.lists)
            if item.shadow is not None:
                shadow = item.shadow.recommend([r.user_id for r in item.lists], item.k, item.exclude_purchased)
                self._add(item, ts, registry.SHADOW, item.shadow.version, shadow)
                self.metrics.bump("shadow_scored", len(shadow))
            if self.config.landing_dir is not None:
                imp = self._imp
                for n, rec in enumerate(item.lists):
                    prefix = f"imp-{item.request_id}-{n}" if len(item.lists) > 1 else f"imp-{item.request_id}"
                    for pos, item_id in enumerate(rec.item_ids, start=1):
                        imp["event_id"].append(f"{prefix}-{pos}")
                        imp["user_id"].append(rec.user_id)
                        imp["item_id"].append(item_id)
                        imp["ts"].append(ts)
        except Exception:  # never let one bad item stop the writer
            log.exception("served-log: could not process request %s", item.request_id)
            self.metrics.bump("log_errors")

    def _add(self, item: Served, ts: int, role: str, version: int, lists: list[Recommendation]) -> None:
        cols = self._log
        for n, rec in enumerate(lists):
            request_id = item.request_id if len(lists) == 1 else f"{item.request_id}-{n}"
            m = len(rec.item_ids)
            cols["request_id"].extend([request_id] * m)
            cols["ts"].extend([ts] * m)
            cols["user_id"].extend([rec.user_id] * m)
            cols["model_version"].extend([version] * m)
            cols["role"].extend([role] * m)
            cols["item_id"].extend(rec.item_ids)
            cols["position"].extend(range(1, m + 1))
            cols["score"].extend(rec.scores)

    def _write(self) -> None:
        log_cols, self._log = self._log, {f: [] for f in LOG_FIELDS}
        imp_cols, self._imp = self._imp, {f: [] for f in IMPRESSION_FIELDS}
        if not log_cols["request_id"] and not imp_cols["event_id"]:
            return
        if self._process is not None:
            self._token += 1
            self._pending.add(self._token)
            self._jobs.put((self._token, log_cols, imp_cols))
            return
        rows, errors = write_batch(log_cols, imp_cols, serving_log.log_directory(self.config.layout.root), self.config.landing_dir)
        self.metrics.bump("log_rows", rows)
        self.metrics.bump("log_errors", errors)

    def _wait_acks(self, timeout: float) -> None:
        """Collect the child's acknowledgements (all pending ones, up to ``timeout`` s, when ``timeout`` > 0)."""
        if self._process is None:
            return
        deadline = time.monotonic() + timeout
        while self._pending:
            try:
                left = deadline - time.monotonic()
                token, rows, errors = self._acks.get(timeout=left) if left > 0 else self._acks.get_nowait()
            except queue.Empty:
                return
            self._pending.discard(token)
            self.metrics.bump("log_rows", rows)
            self.metrics.bump("log_errors", errors)
