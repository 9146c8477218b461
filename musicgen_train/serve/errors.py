"""Error bodies that always encode and stay short: invalid requests are 422 with a bounded excerpt.

FastAPI's own handler answers a validation error with the whole offending input; a NaN or a lone
surrogate in it cannot be encoded (a 500), and a 10 KB field comes back whole. Here every error
names its field and says what is wrong; its ``input`` is at most ``EXCERPT_CHARS`` characters of
text. A body the JSON parser refuses for other reasons (an integer of 5000 digits) is 422 too.
"""

from __future__ import annotations

import math

from fastapi import Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

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


async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    detail = [_error(item) for item in errors[:MAX_ERRORS]]
    if len(errors) > MAX_ERRORS:
        detail.append({"type": "too_many_errors", "loc": [], "msg": f"{len(errors)} errors"})
    return JSONResponse({"detail": detail}, status_code=422)


async def http_error(request: Request, exc: HTTPException):
    if exc.status_code == 400 and exc.detail == PARSE_FAILED:
        cause = exc.__cause__
        why = excerpt(f"{type(cause).__name__}: {cause}" if cause else "unreadable", 200)
        detail = [{"type": "json_invalid", "loc": ["body"], "msg": f"invalid JSON body: {why}"}]
        return JSONResponse({"detail": detail}, status_code=422)
    return await http_exception_handler(request, exc)
