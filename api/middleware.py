"""ASGI middleware: request bodies are limited and read only after the caller is authenticated and authorised;
every response carries the browser security headers.

FastAPI reads and parses a body before it runs a route's dependencies, so without :class:`RequestGuard` an
anonymous client could make the API buffer any amount of data before its key is even looked at. The guard
finds the route, checks the credentials against the route's :class:`api.auth.RoleRule` (401/403) *before*
the first byte of the body is read, refuses a declared or actual body over the route's limit (413), and
hands the principal to the route (``request.state.principal``), so the key is looked up once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, HTTPException
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.routing import Match

from api.auth import Principal, identify, route_rule
from db.session import session_factory
from hep2.settings import get_settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

KIB = 1024
DEFAULT_BODY_LIMIT = 64 * KIB
BODY_LIMITS = {"/v1/events/s3": 1024 * KIB}
"""Largest request body per path (bytes); everything else gets DEFAULT_BODY_LIMIT. An S3 event carries at most
api.events.MAX_RECORDS records of about 1 KiB each."""
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def body_limit(path: str) -> int:
    return BODY_LIMITS.get(path, DEFAULT_BODY_LIMIT)


class RequestGuard:
    """Authenticate and authorise first, then read at most the route's body limit."""

    def __init__(self, app: Callable[..., Awaitable[None]], fastapi_app: FastAPI) -> None:
        self.app, self.fastapi_app = app, fastapi_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        limit = body_limit(scope["path"])
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _refuse(scope, send, 413, f"request body over the limit of {limit} bytes for this route")
            return
        if scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        rule = self._rule(scope)
        if rule is not None:
            try:
                principal = await run_in_threadpool(_identify, headers, rule.webhook)
                rule.check(principal)
            except HTTPException as exc:
                await _refuse(scope, send, exc.status_code, str(exc.detail), exc.headers)
                return
            scope.setdefault("state", {})["principal"] = principal
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > limit:
                await _refuse(scope, send, 413, f"request body over the limit of {limit} bytes for this route")
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(bytes(body)), send)

    def _rule(self, scope: Scope) -> Any:
        route = _find_route(self.fastapi_app.router.routes, scope)
        return route_rule(route.dependant, self.fastapi_app.dependency_overrides) if route is not None else None


def _find_route(routes: list[Any], scope: Scope) -> Any:
    """The APIRoute that will handle ``scope`` (included routers are searched through)."""
    for route in routes:
        if hasattr(route, "original_router"):  # FastAPI wraps include_router()'s routes
            found = _find_route(route.original_router.routes, scope)
            if found is not None:
                return found
            continue
        match, _ = route.matches(scope)
        if match is Match.FULL and hasattr(route, "dependant"):
            return route
    return None


def _identify(headers: Headers, webhook: bool) -> Principal:
    authorization = headers.get("authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    bearer = credentials if scheme.lower() == "bearer" else None
    with session_factory()() as session:
        return identify(session, bearer, headers.get("x-api-key"), webhook)


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def _refuse(scope: Scope, send: Send, status_code: int, detail: str,
                  headers: dict[str, str] | None = None) -> None:
    """Answer without reading the body, and close the connection (the unread body is not drained)."""
    response = JSONResponse({"detail": detail}, status_code=status_code, headers={**(headers or {}),
                                                                                  "Connection": "close"})
    await response(scope, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.disconnect"}


def content_security_policy() -> str:
    """The dashboard's policy: its own scripts and styles only, images also from the S3 endpoint browsers
    reach (presigned links), no framing, no plugins."""
    settings = get_settings()
    images = ["'self'", "data:", "blob:"]
    endpoint = settings.s3_public_endpoint_url or settings.s3_endpoint_url
    if settings.storage_backend == "s3":
        parts = urlsplit(endpoint) if endpoint else None
        images.append(f"{parts.scheme}://{parts.netloc}" if parts and parts.netloc else "https://*.amazonaws.com")
    return ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src "
            f"{' '.join(images)}; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
            "frame-ancestors 'none'")


DOCS_PATHS = ("/docs", "/redoc")
"""FastAPI's interactive docs load Swagger UI / ReDoc from a CDN with inline scripts: no CSP there (they hold
no data; the API they call still needs a key)."""


class SecurityHeaders:
    """CSP, X-Frame-Options, nosniff and no referrer on every response."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app
        self.csp: str | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.csp is None:
            self.csp = content_security_policy()
        docs = scope["path"].startswith(DOCS_PATHS)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [(b"x-frame-options", b"DENY"), (b"x-content-type-options", b"nosniff"),
                         (b"referrer-policy", b"no-referrer")]
                if not docs:
                    extra.append((b"content-security-policy", self.csp.encode()))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)
