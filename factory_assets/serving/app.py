"""The recommendation service (``factory serve``): :func:`create_app` assembles it, :func:`serve` runs it.

Endpoints (OpenAPI at ``/openapi.json``, browsable at ``/docs`` (Swagger UI) and ``/redoc``; both pages load
their JavaScript, CSS and icon from ``/docs-assets/``, the files the ``fastapi-offline`` package ships, so
they work without internet):

=================================  ===========================================================================
``GET /recommendations/{user_id}``  ``?k=10&exclude_purchased=false`` ->
                                    ``{"user_id", "items": [{"item_id", "score"}], "model_version", "fallback"}``
``POST /recommendations``           ``{"user_ids": [...], "k": 10, "exclude_purchased": false}`` ->
                                    ``{"results": [<one answer per user, as above>], "model_version"}``
``GET /healthz``                    200 while the process runs
``GET /readyz``                     200 only when a verified champion is loaded, else 503; ``live``: the live
                                    state in use (``recsys.live``; null when none), ``live_detail``: why none
``GET /metrics``                    Prometheus text: requests, latency histogram, model versions, fallbacks,
                                    the live state's age
``POST /admin/reload``              re-read the aliases now (bearer token); an unchanged alias is a no-op
``POST /admin/rollback``            ``{"reason", "to_version"?}``: registry rollback, then reload (bearer token)
=================================  ===========================================================================

Validation: a user id is 1-128 printable characters; ``1 <= k <= MAX_K``; a batch holds at most
``MAX_BATCH`` users and its body at most ``MAX_BODY_BYTES``.  Every error answer is JSON
``{"error": <short code>, "detail": <message>}`` with a 4xx status (401 admin auth, 404 unknown route,
405 wrong method, 400 body not JSON, 413 body too large, 422 invalid parameters, 503 not ready).

Cold start: a user id the champion never saw gets the popularity ranking (the model's popularity term alone,
the same fallback the factory evaluates as its baseline) with ``"fallback": true``.

Live path: when ``<home>/<source>/live/state.npz`` (the ``live_state`` asset, every ~15 minutes) was built for the
champion, the users active today are scored with today's events, and everyone with the day's category trend when
it is set (:mod:`factory_assets.serving.live`); a user unknown to the champion but active today is not a fallback.
The response JSON is the same either way.

The parts, one module each under :mod:`factory_assets.serving`:

- ``config``: :class:`ServiceConfig` (environment, flags) and the request limits;
- ``scorer``: the loaded models (:class:`~factory_assets.serving.scorer.ModelHolder`, alias loading, verification);
- ``watcher``: hot reload of the champion and shadow aliases, and of the live state file;
- ``live``: the live state of today, checked against the champion (:class:`~factory_assets.serving.live.LiveView`);
- ``log_writer``: the served log, shadow scoring and impression events, off the response path;
- ``metrics``: the Prometheus counters, gauges and latency histogram behind ``/metrics``;
- ``service``: :class:`Service`, the above wired together, and the answer to a request;
- ``schemas``: the JSON request and response models;
- ``routes``: the FastAPI routes and error handlers;
- ``auth``: the admin bearer token (401 before the body is read);
- ``asgi``: the plain ASGI layers (timing, body limit, the fast ``GET /recommendations/{user_id}`` path).

The names below that come from those modules are re-exported here for existing imports.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from factory_assets.serving.asgi import BodyLimit, FastRecommend, TimingMiddleware
from factory_assets.serving.auth import AdminGuard, admin_refusal
from factory_assets.serving.config import (
    ADMIN_PREFIX,
    DOCS_ASSETS_URL,
    MAX_BATCH,
    MAX_BODY_BYTES,
    MAX_K,
    MAX_USER_ID,
    ServiceConfig,
)
from factory_assets.serving.log_writer import IMPRESSION_FIELDS, LOG_FIELDS, LogWriter, write_batch, write_impressions
from factory_assets.serving.metrics import LATENCY_BUCKETS, Metrics
from factory_assets.serving.routes import add_routes
from factory_assets.serving.schemas import (
    BatchOut,
    BatchRequest,
    Item,
    RecommendationOut,
    RollbackRequest,
    json_bytes,
    valid_user_id,
)
from factory_assets.serving.service import Service
from factory_assets.serving.watcher import AliasWatcher

# the former private names of the ASGI wrappers (tests import _FastRecommend)
_FastRecommend, _AdminGuard, _BodyLimit = FastRecommend, AdminGuard, BodyLimit

__all__ = [
    "ADMIN_PREFIX", "DOCS_ASSETS_URL", "IMPRESSION_FIELDS", "LATENCY_BUCKETS", "LOG_FIELDS", "MAX_BATCH",
    "MAX_BODY_BYTES", "MAX_K", "MAX_USER_ID", "AliasWatcher", "BatchOut", "BatchRequest", "Item", "LogWriter",
    "Metrics", "RecommendationOut", "RollbackRequest", "Service", "ServiceConfig", "TimingMiddleware",
    "admin_refusal", "create_app", "json_bytes", "serve", "valid_user_id", "write_batch", "write_impressions",
]

log = logging.getLogger("factory.serve")


def create_app(config: ServiceConfig | None = None) -> FastAPI:
    """The FastAPI app; its lifespan loads the champion, starts the watcher and the log writer, and stops
    them (flushing the logs) on shutdown."""
    from contextlib import asynccontextmanager

    service = Service(config or ServiceConfig.from_env())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        try:
            yield
        finally:
            service.stop()

    # /docs, /redoc: the Swagger UI and ReDoc pages with their files served from DOCS_ASSETS_URL (no CDN);
    # validatorUrl null: Swagger UI must not ask validator.swagger.io about the schema either
    app = FastAPIOffline(title="factory_assets recommendations", version="1", lifespan=lifespan,
                         static_url=DOCS_ASSETS_URL, swagger_ui_parameters={"validatorUrl": None})
    app.state.service = service
    app.add_middleware(TimingMiddleware, metrics=service.metrics)

    add_routes(app, service)
    return AdminGuard(BodyLimit(FastRecommend(app, service), MAX_BODY_BYTES, service.metrics), app, service)


def serve(host: str = "127.0.0.1", port: int = 8000, config: ServiceConfig | None = None, log_level: str = "info") -> int:
    """Run the service with uvicorn until interrupted (``factory serve``)."""
    import uvicorn

    config = config or ServiceConfig.from_env()
    if not config.layout.aliases.exists():
        log.warning("no champion alias under %s (nothing trained for source %r in this home?): the service answers "
                    "503 until one is promoted", config.layout.aliases, config.source)
    if not config.admin_token:
        log.warning("FACTORY_ADMIN_TOKEN is not set: every admin call is refused with 401")
    app = create_app(config)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
    return 0
