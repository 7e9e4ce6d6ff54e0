"""The service's Prometheus metrics: :class:`Metrics` counts them with ``prometheus_client`` (``GET /metrics``).

Request counts and latency are recorded by :class:`~factory_assets.serving.asgi.TimingMiddleware` (and by the ASGI
layers that answer without FastAPI); the other counters by the watcher, the log writer and
:meth:`~factory_assets.serving.service.Service.answer`; the per-role model gauges are read from the
:class:`~factory_assets.serving.scorer.ModelHolder` when rendering (a custom collector), as is
``factory_serve_fallback_rate``, and the live path's gauges (:class:`_LiveGauges`: whether today's state is in use,
its age, its users).

Each :class:`Metrics` has its own :class:`~prometheus_client.CollectorRegistry` (not the library's global one), so
several services in one process (the tests) neither share nor collide.  ``_created`` samples are switched off
(:func:`prometheus_client.disable_created_metrics`, process-wide): the exposition keeps the series it always had.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from factory_assets.ml import registry

if TYPE_CHECKING:
    from factory_assets.serving.scorer import LoadedModel, ModelHolder

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
ROLES = (registry.CHAMPION, registry.SHADOW)

disable_created_metrics()


def _counter_value(counter: Counter) -> float:
    """The current value of a label-less counter, through the public ``collect()``."""
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                return sample.value
    return 0.0


class _FallbackRate(Collector):
    """``factory_serve_fallback_rate``: fallback lists / lists served, computed at scrape time."""

    def __init__(self, recommendations: Counter, fallbacks: Counter) -> None:
        self._recommendations = recommendations
        self._fallbacks = fallbacks

    def describe(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily("factory_serve_fallback_rate", "fallback_total / recommendations_total.")]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        # fallbacks first: Metrics.served counts the lists before their fallbacks, so the rate never exceeds 1
        fallbacks = _counter_value(self._fallbacks)
        served = _counter_value(self._recommendations)
        yield GaugeMetricFamily("factory_serve_fallback_rate", "fallback_total / recommendations_total.",
                                value=fallbacks / served if served else 0.0)


_MODEL_GAUGES: tuple[tuple[str, str, Callable[[LoadedModel], float]], ...] = (
    ("factory_serve_model_version", "Registry version loaded per role (0: none).", lambda m: m.version),
    ("factory_serve_model_load_seconds",
     "Seconds spent preparing the loaded model for serving (a ranker's precompute).", lambda m: round(m.precompute_s, 6)),
    ("factory_serve_model_precomputed_bytes", "Bytes of precomputed per-user rankings kept for the loaded model.",
     lambda m: m.precompute_bytes),
)


class _ModelGauges(Collector):
    """The per-role model gauges, read from the holder at scrape time (0 for a role with no model loaded)."""

    def __init__(self) -> None:
        self.holder: ModelHolder | None = None  # set by Metrics.render

    def describe(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily(name, text, labels=("role",)) for name, text, _ in _MODEL_GAUGES]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        holder = self.holder
        loaded = {role: getattr(holder, role, None) for role in ROLES}  # each reference read once per scrape
        for name, text, value in _MODEL_GAUGES:
            family = GaugeMetricFamily(name, text, labels=("role",))
            for role in ROLES:
                model = loaded[role]
                family.add_metric((role,), value(model) if model is not None else 0)
            yield family


class _LiveGauges(Collector):
    """The live state in use for the champion (``ModelHolder.live_for``), read at scrape time.

    ``factory_serve_live_state_loaded`` 1/0 (always); ``factory_serve_live_state_users`` (0 without one);
    ``factory_serve_live_state_age_seconds``: now minus the state's ``as_of`` (the age of "today so far"), only
    while one is in use (no sample otherwise: alert on it with ``absent()`` or on ``loaded == 0``).
    """

    _TEXT = {
        "factory_serve_live_state_loaded": "1 while a live state built for the champion is in use, else 0.",
        "factory_serve_live_state_users": "Users active today in the live state in use (0: none in use).",
        "factory_serve_live_state_age_seconds": "Seconds since the as_of of the live state in use (absent: none).",
    }

    def __init__(self) -> None:
        self.holder: ModelHolder | None = None  # set by Metrics.render

    def describe(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily(name, text) for name, text in self._TEXT.items()]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        holder = self.holder
        live = holder.live_for(holder.champion) if holder is not None else None
        yield GaugeMetricFamily("factory_serve_live_state_loaded", self._TEXT["factory_serve_live_state_loaded"],
                                value=int(live is not None))
        yield GaugeMetricFamily("factory_serve_live_state_users", self._TEXT["factory_serve_live_state_users"],
                                value=len(live.state.user_ids) if live is not None else 0)
        age = GaugeMetricFamily("factory_serve_live_state_age_seconds", self._TEXT["factory_serve_live_state_age_seconds"])
        if live is not None:
            age.add_metric((), round(live.age_s(), 3))
        yield age


class Metrics:
    """The service's counters, gauges and latency histogram, in a private ``prometheus_client`` registry.

    Public methods (the callers' interface): :meth:`observe` (one answered request), :meth:`served` (lists and
    fallbacks), :meth:`bump` (the other counters, by attribute name: ``reloads``, ``reload_failures``,
    ``shadow_scored``, ``log_rows``, ``log_errors``, ``recommendations``, ``fallbacks``, ``live_lists``,
    ``live_failures``),
    :meth:`set_alias_missing`, :meth:`render`; :attr:`content_type` is the media type of :meth:`render`'s text.
    """

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        # Counter names without "_total": prometheus_client appends it (the exposed names are unchanged)
        self._requests = Counter("factory_serve_requests", "HTTP requests answered.", ("method", "route", "status"),
                                 registry=reg)
        self._latency = Histogram("factory_serve_request_duration_seconds", "Request latency.", ("route",),
                                  buckets=LATENCY_BUCKETS, registry=reg)
        self._alias_missing = Gauge("factory_serve_alias_missing", "1 while the role's alias file is missing "
                                    "(the last loaded model keeps serving).", ("role",), registry=reg)
        self._alias_missing.labels(registry.CHAMPION).set(0)
        recommendations = Counter("factory_serve_recommendations", "Recommendation lists served.", registry=reg)
        fallbacks = Counter("factory_serve_fallback", "Lists served with the cold-start fallback.", registry=reg)
        reg.register(_FallbackRate(recommendations, fallbacks))
        self._counters: dict[str, Counter] = {
            "recommendations": recommendations,
            "fallbacks": fallbacks,
            "reloads": Counter("factory_serve_reloads", "Models swapped in after verification.", registry=reg),
            "reload_failures": Counter("factory_serve_reload_failures", "Alias changes refused (unverifiable artefact).",
                                       registry=reg),
            "shadow_scored": Counter("factory_serve_shadow_scored", "Requests scored by the shadow model.", registry=reg),
            "log_rows": Counter("factory_serve_served_log_rows", "Served-log rows written.", registry=reg),
            "log_errors": Counter("factory_serve_log_write_errors", "Failed log or impression writes.", registry=reg),
            "live_lists": Counter("factory_serve_live_lists", "Lists scored with today's events (live state).",
                                  registry=reg),
            "live_failures": Counter("factory_serve_live_state_failures",
                                     "Live state files that did not load or fit the champion.", registry=reg),
        }
        self._recommendations, self._fallbacks = recommendations, fallbacks
        self._models = _ModelGauges()
        reg.register(self._models)
        self._live = _LiveGauges()
        reg.register(self._live)
        # (method, route, status) -> (counter child, histogram child), cached: labels() takes the metric's lock and
        # builds the label tuple on every call; after the first request of a kind, a request costs one dict lookup
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            children = self._children.setdefault(key, (self._requests.labels(method, route, str(status)),
                                                       self._latency.labels(route)))
        children[0].inc()
        children[1].observe(seconds)

    def served(self, n: int, fallbacks: int, live: int = 0) -> None:
        self._recommendations.inc(n)  # before the fallbacks: see _FallbackRate.collect
        if fallbacks:
            self._fallbacks.inc(fallbacks)
        if live:
            self._counters["live_lists"].inc(live)

    def bump(self, name: str, n: int = 1) -> None:
        try:
            counter = self._counters[name]
        except KeyError:
            raise AttributeError(f"no counter {name!r} in Metrics (one of {sorted(self._counters)})") from None
        counter.inc(n)

    def set_alias_missing(self, role: str, missing: bool) -> None:
        self._alias_missing.labels(role).set(int(missing))

    def render(self, holder: ModelHolder) -> str:
        """The Prometheus text exposition (:attr:`content_type`), the model gauges read from ``holder``."""
        self._models.holder = holder
        self._live.holder = holder
        return generate_latest(self.registry).decode()
