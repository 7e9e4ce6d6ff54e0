"""The FastAPI routes and error handlers (:func:`add_routes`); the endpoint table: :mod:`factory_assets.serving.app`.

``GET /recommendations/{user_id}`` is usually answered before FastAPI by
:class:`~factory_assets.serving.asgi.FastRecommend`; the route here answers whatever it passes on (and defines the
OpenAPI schema).  Admin routes depend on :func:`~factory_assets.serving.auth.route_guard` and sit behind
:class:`~factory_assets.serving.auth.AdminGuard`.
"""

from __future__ import annotations

import json

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from factory_assets.ml import registry
from factory_assets.serving.auth import route_guard
from factory_assets.serving.config import MAX_K, MAX_USER_ID
from factory_assets.serving.schemas import (
    BatchOut,
    BatchRequest,
    RecommendationOut,
    RollbackRequest,
    error_response,
    recommendation_json,
    valid_user_id,
)
from factory_assets.serving.service import Service


def add_routes(app: FastAPI, service: Service) -> None:
    """Register the error handlers and every route of the service on ``app``."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        codes = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 413: "payload_too_large"}
        headers = getattr(exc, "headers", None)
        resp = error_response(exc.status_code, codes.get(exc.status_code, "http_error"), exc.detail)
        if headers:
            resp.headers.update(headers)
        return resp

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "invalid_json", "the request body is not valid JSON")
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg")} for e in errors]
        return error_response(422, "invalid_request", detail)

    def not_ready() -> JSONResponse:
        return error_response(503, "not_ready", "no verified champion is loaded")

    @app.get("/recommendations/{user_id}", response_model=RecommendationOut, tags=["recommendations"])
    async def recommend_one(
        user_id: str, k: int = Query(10, ge=1, le=MAX_K), exclude_purchased: bool | None = Query(None)
    ):
        """Top-k for one user; unknown (valid) ids get the popularity fallback with ``fallback: true``."""
        if not valid_user_id(user_id):
            return error_response(422, "invalid_user_id", f"a user id is 1-{MAX_USER_ID} printable characters")
        if service.holder.champion is None:
            return not_ready()
        champion, lists = service.answer([user_id], k, exclude_purchased)
        return JSONResponse(recommendation_json(lists[0], champion.version))

    @app.post("/recommendations", response_model=BatchOut, tags=["recommendations"])
    async def recommend_batch(request: Request, body: BatchRequest):
        """Top-k for up to ``MAX_BATCH`` users in one call (body at most ``MAX_BODY_BYTES``)."""
        bad = [u for u in body.user_ids if not valid_user_id(u)]
        if bad:
            return error_response(422, "invalid_user_id", f"{len(bad)} user id(s) are not 1-{MAX_USER_ID} printable characters")
        if service.holder.champion is None:
            return not_ready()
        champion, lists = service.answer(body.user_ids, body.k, body.exclude_purchased)
        return JSONResponse({"results": [recommendation_json(r, champion.version) for r in lists],
                             "model_version": champion.version})

    @app.get("/healthz", tags=["operations"])
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"])
    async def readyz():
        """200 only when a verified champion is loaded; ``live``: the live state in use for it (``LiveState.describe()``,
        null when none), ``live_detail``: why none is in use (null when one is, or when there is no state file)."""
        champion, shadow = service.holder.champion, service.holder.shadow
        live = service.holder.live_for(champion)
        body = {
            "ready": champion is not None,
            "champion": None if champion is None else {"version": champion.version, "sha256": champion.sha256},
            "shadow": None if shadow is None else {"version": shadow.version, "sha256": shadow.sha256},
            "last_error": service.watcher.last_error,
            "live": None if live is None else live.describe(),
            "live_detail": None if live is not None else service.watcher.live_detail,
        }
        return JSONResponse(body, status_code=200 if champion is not None else 503)

    @app.get("/metrics", tags=["operations"])
    async def metrics():
        return PlainTextResponse(service.metrics.render(service.holder), media_type=service.metrics.content_type)

    admin_guard = route_guard(service)

    @app.post("/admin/reload", tags=["admin"], dependencies=[Depends(admin_guard)])
    def admin_reload(request: Request):
        """Re-read and verify both aliases now; 409 when the champion alias is refused (old keeps serving)."""
        result = service.watcher.check(force=True)
        status = 409 if result.get(registry.CHAMPION, {}).get("error") else 200
        return JSONResponse({"reload": result}, status_code=status)

    @app.post("/admin/rollback", tags=["admin"], dependencies=[Depends(admin_guard)])
    def admin_rollback(request: Request, body: RollbackRequest):
        """Roll the registry back (previous eligible champion or ``to_version``), then reload."""
        from factory_assets.ml.models_cli import CommandError, rollback_champion

        try:
            result = rollback_champion(service.config.layout, body.reason, "service", body.to_version)
        except CommandError as exc:
            return error_response(409, exc.kind, str(exc))
        result["reload"] = service.watcher.check(force=True)
        return JSONResponse(json.loads(json.dumps(result, default=str)))
