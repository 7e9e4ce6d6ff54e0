"""The running service: :class:`Service` wires the model holder, metrics, alias watcher and log writer together
and answers a recommendation request (:meth:`Service.answer`, shared by the FastAPI route and the fast path).

The champion's live view of today (:mod:`factory_assets.serving.live`), when one is loaded for the champion a request
read, is part of the answer: the users active today are scored with today's events.  The JSON is unchanged (the
response schema has no ``live`` field); ``factory_serve_live_lists_total`` counts such lists."""

from __future__ import annotations

import itertools
import uuid

from factory_assets.serving.config import ServiceConfig
from factory_assets.serving.log_writer import LogWriter, Served
from factory_assets.serving.metrics import Metrics
from factory_assets.serving.scorer import LoadedModel, ModelHolder, Recommendation
from factory_assets.serving.watcher import AliasWatcher


class Service:
    """The parts of a running service; ``app.state.service`` in the FastAPI app."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.holder = ModelHolder()
        self.metrics = Metrics()
        self.watcher = AliasWatcher(config, self.holder, self.metrics)
        self.writer = LogWriter(config, self.metrics)
        # request ids: a random per-process prefix and a counter (no urandom syscall, which drops the GIL, per request)
        self._id_prefix = uuid.uuid4().hex[:20]
        self._id_counter = itertools.count()

    def start(self) -> None:
        self.watcher.check(force=True)
        self.writer.start()
        if self.config.watch:
            self.watcher.start()

    def stop(self) -> None:
        self.watcher.stop()
        self.writer.stop()

    def answer(self, user_ids: list[str], k: int, exclude_purchased: bool | None) -> tuple[LoadedModel, list[Recommendation]]:
        champion = self.holder.champion  # read the reference once: the whole request uses this model
        shadow = self.holder.shadow
        live = self.holder.live_for(champion)  # None unless today's state was built for this very champion
        exclude = self.config.exclude_purchased if exclude_purchased is None else exclude_purchased
        lists = champion.recommend(user_ids, k, exclude, live)
        self.metrics.served(len(lists), sum(r.fallback for r in lists), sum(r.live for r in lists) if live else 0)
        request_id = f"{self._id_prefix}{next(self._id_counter):012x}"  # 32 hex digits, unique per process start
        self.writer.submit(Served(request_id, self.config.clock(), lists, champion, shadow, k, exclude))
        return champion, lists
