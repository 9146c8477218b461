"""HTTP hygiene: security headers (a Content-Security-Policy for the HTML pages), CORS, and API
keys kept out of the server's logs."""

from __future__ import annotations

import base64
import hashlib
import logging
import re

from fastapi.middleware.cors import CORSMiddleware

# Query parameters a client may have put a key in (the service never reads a key from the URL:
# auth.py refuses it), redacted from logged URLs, which proxies and log shippers keep.
SECRET_QUERY = re.compile(r"(?i)([?&](?:api[_-]?key|key|token|access[_-]?token)=)[^&\s\"]*")
SECRET_HEADERS = {b"authorization", b"x-api-key", b"cookie", b"proxy-authorization"}
REDACTED = "REDACTED"

# Every answer: no MIME sniffing (an upload served back is never run as a script), no framing
# (clickjacking of the web page), no URL with ids leaking to other sites as a Referer.
COMMON_HEADERS = {
    b"x-content-type-options": b"nosniff",
    b"x-frame-options": b"DENY",
    b"referrer-policy": b"no-referrer",
}
# The pages (/ and /docs) load only this server's files; their inline scripts and styles are
# allowed by hash, so an injected one would not run. blob: plays and saves fetched audio.
PAGE_POLICY = (
    "default-src 'self'; script-src 'self' {scripts}; style-src 'self' {styles}; "
    "img-src 'self' data:; media-src 'self' blob:; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_INLINE = {
    "scripts": re.compile(rb"<script>(.*?)</script>", re.S),  # no src attribute: inline
    "styles": re.compile(rb"<style>(.*?)</style>", re.S),
}


def add_cors(app, settings, exposed_headers) -> None:
    """CORS, only for the origins in ``serve.cors.allow_origins`` (none: same origin only)."""
    if settings.cors.allow_origins:
        # No allow_credentials: keys travel in headers, never in cookies, so a listed origin
        # (even "*") gets no ambient credentials of a user's.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors.allow_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["X-API-Key", "Authorization", "Content-Type"],
            expose_headers=[*exposed_headers],
        )


def page_policy(html: bytes) -> str:
    """The Content-Security-Policy of an HTML page: its own inline scripts and styles by hash."""
    hashes = {}
    for kind, pattern in _INLINE.items():
        digests = (hashlib.sha256(block).digest() for block in pattern.findall(html))
        hashes[kind] = " ".join(f"'sha256-{base64.b64encode(d).decode()}'" for d in digests)
    return PAGE_POLICY.format(**hashes)


class SecurityHeaders:
    """Pure ASGI (streamed audio passes through): ``COMMON_HEADERS`` on every answer and, on
    an HTML page (small, sent whole), a Content-Security-Policy made from its body."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        held: list[dict] = []  # an HTML page's start, until its body gives the policy

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), *_missing(message, COMMON_HEADERS)]
                message = {**message, "headers": headers}
                if _is_html(headers):
                    held.append(message)
                    return
            elif held and message["type"] == "http.response.body":
                start = held.pop()
                if message.get("more_body"):  # not a page of ours: sent without a policy
                    await send(start)
                else:
                    policy = page_policy(message.get("body", b"")).encode()
                    csp = (b"content-security-policy", policy)
                    await send({**start, "headers": [*start["headers"], csp]})
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _missing(message: dict, headers: dict[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    present = {name.lower() for name, _ in message.get("headers", [])}
    return [(name, value) for name, value in headers.items() if name not in present]


def _is_html(headers) -> bool:
    return any(n.lower() == b"content-type" and v.startswith(b"text/html") for n, v in headers)


class RedactSecrets(logging.Filter):
    """Takes API keys out of uvicorn's log records: a key in a URL's query string (the access
    log line) and key headers in the ASGI scope (logged at ``log_level=trace``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_redacted(arg) for arg in record.args)
        if isinstance(record.msg, str):
            record.msg = SECRET_QUERY.sub(rf"\g<1>{REDACTED}", record.msg)
        return True


def _redacted(value):
    if isinstance(value, str):
        return SECRET_QUERY.sub(rf"\g<1>{REDACTED}", value)
    if not isinstance(value, dict):
        return value
    redacted = dict(value)  # an ASGI scope: the server still uses the original
    if isinstance(value.get("headers"), list | tuple):
        redacted["headers"] = [
            (name, REDACTED.encode() if bytes(name).lower() in SECRET_HEADERS else val)
            for name, val in value["headers"]
        ]
    if isinstance(value.get("query_string"), bytes):
        query = _redacted("?" + value["query_string"].decode("latin-1"))
        redacted["query_string"] = query[1:].encode("latin-1")
    return redacted


def redact_server_logs() -> None:
    """Install ``RedactSecrets`` on uvicorn's loggers (once; after uvicorn configured them)."""
    for name in ("uvicorn.access", "uvicorn.asgi", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())
