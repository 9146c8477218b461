"""Pure ASGI middleware (so streamed responses pass straight through): request metrics, and a
limit on the size of request bodies."""

from __future__ import annotations

import json
import time

from starlette.exceptions import HTTPException

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
    ``paths``: other limits for some paths (uploads: ``serve.limits.max_upload_bytes``)."""

    def __init__(self, app, max_bytes: int, paths: dict[str, int] | None = None):
        self.app, self.max_bytes, self.paths = app, max_bytes, dict(paths or {})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.paths.get(scope.get("path", ""), self.max_bytes)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await self._reject(send, limit)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                # FastAPI re-raises HTTPExceptions from body reading as they are.
                raise HTTPException(413, self._detail(limit))
            return message

        await self.app(scope, limited_receive, send)

    def _detail(self, limit: int) -> str:
        key = "max_body_bytes" if limit == self.max_bytes else "max_upload_bytes"
        return f"request body larger than {limit} bytes (serve.limits.{key})"

    async def _reject(self, send, limit: int) -> None:
        body = json.dumps({"detail": self._detail(limit)}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
