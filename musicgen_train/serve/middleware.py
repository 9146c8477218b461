"""Pure ASGI middleware (so streamed responses pass straight through): request metrics, a limit
on the size of request bodies, HEAD for every GET route, and rate-limit headers."""

from __future__ import annotations

import asyncio
import json
import time

from starlette.exceptions import HTTPException

from musicgen_train.serve.auth import QUOTA_SCOPE_KEY
from musicgen_train.serve.metrics import ServiceMetrics


class RequestMetrics:
    """Counts requests by method, route template (never the raw path) and status code."""

    def __init__(self, app, metrics: ServiceMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), [500]

        async def record_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(scope["method"], route, str(status[0])).inc()
            self.metrics.request_seconds.labels(route).observe(time.perf_counter() - started)


class BodySizeLimit:
    """413 for bodies above ``max_bytes``, whether announced by Content-Length or streamed;
    ``paths``: other limits for some paths (uploads: ``serve.limits.max_upload_bytes``). 408
    for a body that stalls ``timeout`` seconds between two chunks (uvicorn waits for ever)."""

    def __init__(
        self, app, max_bytes: int, paths: dict[str, int] | None = None, timeout: float = 30.0
    ):
        self.app, self.max_bytes, self.paths = app, max_bytes, dict(paths or {})
        self.timeout = timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.paths.get(scope.get("path", ""), self.max_bytes)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await self._reject(send, limit)
        received, body_done = 0, False

        async def limited_receive():
            nonlocal received, body_done
            if body_done:  # a response listening for the client to leave: no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout)
            except asyncio.TimeoutError:
                raise HTTPException(408, self._stalled()) from None
            body_done = not message.get("more_body", False)
            received += len(message.get("body", b""))
            if received > limit:
                # FastAPI re-raises HTTPExceptions from body reading as they are.
                raise HTTPException(413, self._detail(limit))
            return message

        await self.app(scope, limited_receive, send)

    def _stalled(self) -> str:
        return (
            f"the request body stalled for {self.timeout:g} s (serve.limits.body_timeout): "
            "send it at once"
        )

    def _detail(self, limit: int) -> str:
        key = "max_body_bytes" if limit == self.max_bytes else "max_upload_bytes"
        return f"request body larger than {limit} bytes (serve.limits.{key})"

    async def _reject(self, send, limit: int) -> None:
        body = json.dumps({"detail": self._detail(limit)}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class HeadAsGet:
    """``HEAD`` answers as ``GET`` would, without the body (RFC 9110: every server supports HEAD
    where it supports GET). FastAPI routes declare GET only, so uptime monitors that probe with
    HEAD, and clients asking for an audio file's size first, got 405. The request runs as GET
    (same auth, limits and status); the first body message ends the response, and a streamed
    body (a WAV stream, events) is then told that the client left, so it stops."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)
        ended = asyncio.Event()

        async def head_send(message):
            if ended.is_set():
                return
            if message["type"] == "http.response.body":
                message = {"type": "http.response.body", "body": b"", "more_body": False}
                ended.set()
            await send(message)

        async def head_receive():
            if ended.is_set():
                return {"type": "http.disconnect"}
            waiting = asyncio.ensure_future(receive())
            stop = asyncio.ensure_future(ended.wait())
            await asyncio.wait({waiting, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if waiting.done():
                return waiting.result()
            waiting.cancel()
            return {"type": "http.disconnect"}

        inner = {**scope, "method": "GET"}  # a copy: the server still knows it is a HEAD
        try:
            await self.app(inner, head_receive, head_send)
        finally:
            if "route" in inner:  # for RequestMetrics' route label
                scope["route"] = inner["route"]


class JsonByDefault:
    """A request to a JSON route that names no Content-Type is read as JSON. FastAPI reads such
    a body as raw bytes and answered "Input should be a valid dictionary" with the bytes quoted
    back: what ``requests.post(url, data=json.dumps(body))`` and raw HTTP clients sent. (A body
    that names another type is a 415: ``errors.invalid_request``.)"""

    def __init__(self, app, paths: set[str]):
        self.app, self.paths = app, set(paths)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("path") in self.paths:
            headers = scope["headers"]
            if not any(name == b"content-type" for name, _ in headers):
                # In place, not a copy: the router's "route" must reach RequestMetrics' scope.
                scope["headers"] = [*headers, (b"content-type", b"application/json")]
        return await self.app(scope, receive, send)


class QuotaHeaders:
    """``X-RateLimit-*`` on every answer to a rate-limited request (``auth.caller`` leaves the
    request's ``Quota`` in its scope). Here, not in the routes: audio, streams and events are
    Responses of their own, which drop the headers a dependency sets."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_quota(message):
            quota = scope.get(QUOTA_SCOPE_KEY)
            if message["type"] == "http.response.start" and quota is not None:
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                for name, value in quota.headers().items():
                    if name.lower().encode() not in names:  # a 429 carries its own already
                        headers.append((name.lower().encode(), value.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_quota)
