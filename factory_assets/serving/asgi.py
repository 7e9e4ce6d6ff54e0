"""The plain ASGI layers around the FastAPI app: request timing, the body-size limit, the fast recommendation path.

:func:`~factory_assets.serving.app.create_app` stacks them as ``AdminGuard(BodyLimit(FastRecommend(app)))``, with
:class:`TimingMiddleware` inside the FastAPI app (the admin guard is :mod:`factory_assets.serving.auth`).  Each
wrapper forwards attribute access to the app it wraps, so the result still looks like the FastAPI app (``state``,
``openapi``, ``routes``).
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from fastapi import FastAPI

from factory_assets.serving.config import MAX_K
from factory_assets.serving.metrics import Metrics
from factory_assets.serving.schemas import json_bytes, recommendation_json, valid_user_id

if TYPE_CHECKING:
    from factory_assets.serving.service import Service

_RECOMMEND_PREFIX = "/recommendations/"
_RECOMMEND_ROUTE = "/recommendations/{user_id}"


class TimingMiddleware:
    """Pure ASGI middleware: per-route request counts and latency (cheaper than ``BaseHTTPMiddleware``)."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.observe(scope["method"], path, status[0], time.perf_counter() - started)


class FastRecommend:
    """ASGI wrapper answering the common ``GET /recommendations/{user_id}`` itself, byte for byte as the route.

    FastAPI's parameter machinery (dependency solving, pydantic) costs several times what serving a
    precomputed list does.  This layer answers only requests it can validate trivially: a GET whose user id
    passes :func:`valid_user_id`, whose query string holds at most one ``k`` (plain decimal ``1..MAX_K``) and
    one ``exclude_purchased`` (``true`` / ``false``) and nothing else, while a champion is loaded.  Anything
    else (invalid or unusual values, other routes, not ready) goes on to the FastAPI app, so every error answer
    and the OpenAPI schema stay FastAPI's.  What it answers is what the route answers: the same JSON bytes, the
    same ``content-length`` / ``content-type`` headers, and a latency observation under the route
    ``/recommendations/{user_id}``.
    """

    def __init__(self, app: FastAPI, service: "Service") -> None:
        self.app = app
        self.service = service
        self.state = app.state

    def __getattr__(self, name):  # behave like the FastAPI app (openapi, routes, ...)
        return getattr(self.app, name)

    @staticmethod
    def parse(scope) -> tuple[str, int, bool | None] | None:
        """``(user_id, k, exclude_purchased)`` of a plainly valid request, None for anything else."""
        if scope["method"] != "GET" or scope.get("root_path") or not scope["path"].startswith(_RECOMMEND_PREFIX):
            return None
        user_id = scope["path"][len(_RECOMMEND_PREFIX):]
        if "/" in user_id or not valid_user_id(user_id):
            return None
        k, exclude, seen = 10, None, set()
        query = scope.get("query_string", b"")
        for part in query.split(b"&") if query else ():
            key, eq, value = part.partition(b"=")
            if key in seen or not eq:
                return None
            seen.add(key)
            if key == b"k" and value.isdigit() and len(value) <= len(str(MAX_K)) and not value.startswith(b"0"):
                k = int(value)
            elif key == b"exclude_purchased" and value in (b"true", b"false"):
                exclude = value == b"true"
            else:
                return None
        return (user_id, k, exclude) if k <= MAX_K else None

    async def __call__(self, scope, receive, send):
        parsed = self.parse(scope) if scope["type"] == "http" else None
        if parsed is None or self.service.holder.champion is None:
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500
        try:
            champion, lists = self.service.answer([parsed[0]], parsed[1], parsed[2])
            body = json_bytes(recommendation_json(lists[0], champion.version))
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            status = 200
        finally:
            self.service.metrics.observe("GET", _RECOMMEND_ROUTE, status, time.perf_counter() - started)


class BodyLimit:
    """ASGI wrapper refusing request bodies over ``limit`` bytes with 413 (declared or streamed)."""

    def __init__(self, app: FastAPI, limit: int, metrics: Metrics) -> None:
        self.app = app
        self.limit = limit
        self.metrics = metrics
        self.state = app.state

    def __getattr__(self, name):  # behave like the FastAPI app (openapi, routes, ...)
        return getattr(self.app, name)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = self.limit + 1
                if declared > self.limit:
                    return await self._too_large(scope, send)
        if scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return await self.app(scope, receive, send)
        # read the whole (bounded) body first, so a chunked upload cannot exceed the limit either
        chunks, seen, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # client went away
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.limit:
                return await self._too_large(scope, send)
            chunks.append(chunk)
            more = message.get("more_body", False)
        replayed = [False]

        async def replay():
            if not replayed[0]:
                replayed[0] = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope, send):
        self.metrics.observe(scope["method"], "body_too_large", 413, 0.0)
        body = json.dumps({"error": "payload_too_large", "detail": f"request bodies are limited to {self.limit} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
