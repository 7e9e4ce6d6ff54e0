"""Admin authentication: every ``/admin`` path needs ``Authorization: Bearer <FACTORY_ADMIN_TOKEN>``.

The token is compared with :func:`hmac.compare_digest`; with no token configured every admin call gets 401.  It
is checked for every ``/admin/...`` path before the request reaches FastAPI (:class:`AdminGuard`), so a caller
without it gets 401 whatever the body: never 400 (malformed JSON), 413 (too large) or 422 (invalid fields), and
the body is not even read.  :func:`route_guard` checks it again as a dependency of each admin route.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from factory_assets.serving.config import ADMIN_PREFIX
from factory_assets.serving.schemas import json_bytes

if TYPE_CHECKING:
    from factory_assets.serving.service import Service


def admin_refusal(token: str | None, authorization: str) -> str | None:
    """Why an admin call with this ``Authorization`` header value is refused (401), or None when it may go on."""
    scheme, _, given = authorization.partition(" ")
    if token and scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
        return None
    if not token:
        return "the admin API is disabled: the server was started without FACTORY_ADMIN_TOKEN"
    return "admin calls need 'Authorization: Bearer <FACTORY_ADMIN_TOKEN>'"


def route_guard(service: "Service") -> Callable[[Request], None]:
    """The dependency of every admin route."""

    def admin_guard(request: Request) -> None:
        """Behind :class:`AdminGuard` (which refuses a request without the token before FastAPI parses its body):
        the same check again, should a route ever be reached another way."""
        refusal = admin_refusal(service.config.admin_token, request.headers.get("authorization", ""))
        if refusal is not None:
            raise StarletteHTTPException(401, refusal, headers={"WWW-Authenticate": "Bearer"})

    return admin_guard


class AdminGuard:
    """ASGI wrapper answering 401 to every ``/admin`` or ``/admin/...`` request without the bearer token.

    It runs before anything else looks at the request: FastAPI parses a JSON body (400 for malformed JSON)
    before it solves a route's dependencies, and :class:`~factory_assets.serving.asgi.BodyLimit` reads the body
    to bound it (413), so a check in the route would let a caller without the token learn about its body.
    Here the body is never read; unknown admin paths get 401 as well (404 only with the token).  A refusal is
    counted in the request metrics under the admin route it matches (``unmatched`` for an unknown path), as the
    route would be.
    """

    def __init__(self, app, fastapi_app: FastAPI, service: "Service") -> None:
        self.app = app
        self.fastapi_app = fastapi_app
        self.service = service
        self.state = app.state

    def __getattr__(self, name):  # behave like the FastAPI app (openapi, routes, ...)
        return getattr(self.app, name)

    @staticmethod
    def is_admin(scope) -> bool:
        path, root = scope["path"], scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        return path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.is_admin(scope):
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        header = next((v for k, v in scope.get("headers", ()) if k == b"authorization"), b"")
        refusal = admin_refusal(self.service.config.admin_token, header.decode("latin-1"))
        if refusal is None:
            return await self.app(scope, receive, send)
        body = json_bytes({"error": "unauthorized", "detail": refusal})
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json"),
                                (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})
        route = next((r.path for r in self.fastapi_app.router.routes if r.matches(scope)[0] is not Match.NONE), "unmatched")
        self.service.metrics.observe(scope["method"], route, 401, time.perf_counter() - started)
