"""Error bodies that always encode and stay short: invalid requests are 422 with a bounded excerpt.

FastAPI's own handler answers a validation error with the whole offending input; a NaN or a lone
surrogate in it cannot be encoded (a 500), and a 10 KB field comes back whole. Here every error
names its field and says what is wrong; its ``input`` is at most ``EXCERPT_CHARS`` characters of
text. A body the JSON parser refuses for other reasons (an integer of 5000 digits) is 422 too.
"""

from __future__ import annotations

import logging
import math

from fastapi import Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match

log = logging.getLogger(__name__)

EXCERPT_CHARS = 80
MESSAGE_CHARS = 300
MAX_ERRORS = 10
PARSE_FAILED = "There was an error parsing the body"  # FastAPI's 400 for a body json cannot read


def excerpt(value, limit: int = EXCERPT_CHARS) -> str:
    """At most ``limit`` characters of ``value`` as text that always encodes as UTF-8."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    text = value if isinstance(value, str) else repr(value)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def _error(item: dict) -> dict:
    msg = str(item.get("msg", "invalid"))
    error = (item.get("ctx") or {}).get("error")
    if item.get("type") == "json_invalid" and error:
        msg = f"{msg}: {error}"
    out = {
        "type": str(item.get("type", "value_error")),
        "loc": [p if isinstance(p, int) else excerpt(p, 60) for p in item.get("loc", ())],
        "msg": excerpt(msg, MESSAGE_CHARS),
    }
    if "input" in item:
        out["input"] = excerpt(item["input"])
    return out


def _not_json(request: Request, errors: list) -> str | None:
    """The request's content type when a JSON body came with another one: FastAPI then reads
    the body as raw bytes and refuses it as "not a valid dictionary", quoting bytes back (what
    ``curl -d`` without ``-H 'content-type: application/json'`` got). None otherwise."""
    given = request.headers.get("content-type")
    media = (given or "").split(";")[0].strip().lower()
    if not given or media == "application/json" or media.endswith("+json"):
        return None
    if any(
        e.get("type") == "model_attributes_type" and tuple(e.get("loc", ())) == ("body",)
        for e in errors
    ):
        return given
    return None


async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    given = _not_json(request, errors)
    if given is not None:
        msg = f"the body must be JSON sent as 'Content-Type: application/json', not {given!r}"
        return JSONResponse({"detail": excerpt(msg, 200)}, status_code=415)
    detail = [_error(item) for item in errors[:MAX_ERRORS]]
    if len(errors) > MAX_ERRORS:
        detail.append({"type": "too_many_errors", "loc": [], "msg": f"{len(errors)} errors"})
    return JSONResponse({"detail": detail}, status_code=422)


def allowed_methods(request: Request) -> str:
    """Every method some route of the request's path takes, HEAD wherever GET is (the
    ``HeadAsGet`` middleware answers it): Starlette's ``Allow`` names only the first matching
    route's methods (GET alone on a path with GET and POST routes) and never HEAD."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        route_methods = getattr(route, "methods", None)  # None: a mount (the docs' assets)
        if route_methods and route.matches(request.scope)[0] != Match.NONE:
            methods |= set(route_methods)
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods))


async def http_error(request: Request, exc: HTTPException):
    if exc.status_code == 405:
        allow = allowed_methods(request)
        detail = f"{request.method} is not allowed here: use {allow}"
        return JSONResponse({"detail": detail}, status_code=405, headers={"Allow": allow})
    if exc.status_code == 400 and exc.detail == PARSE_FAILED:
        cause = exc.__cause__
        why = excerpt(f"{type(cause).__name__}: {cause}" if cause else "unreadable", 200)
        detail = [{"type": "json_invalid", "loc": ["body"], "msg": f"invalid JSON body: {why}"}]
        return JSONResponse({"detail": detail}, status_code=422)
    return await http_exception_handler(request, exc)


DATABASE_RETRY_SECONDS = 5


async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """The job database cannot be reached or used (down, locked, restarting): 503 with
    Retry-After, as readiness says, rather than a 500 that tells a client nothing. The driver's
    message (it may name an internal host, user or file) goes to the log, not to the client."""
    log.error("database error on %s %s: %s", request.method, request.url.path, exc)
    return JSONResponse(
        {"detail": f"the job database is unavailable: retry in {DATABASE_RETRY_SECONDS} s"},
        status_code=503,
        headers={"Retry-After": str(DATABASE_RETRY_SECONDS)},
    )


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """Any other unexpected error: a JSON body like every other answer, not plain text (the
    traceback goes to the log, as before)."""
    return JSONResponse({"detail": "internal server error"}, status_code=500)
