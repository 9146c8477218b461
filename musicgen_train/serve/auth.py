"""API keys and per-key rate limits.

Keys come from an environment variable and/or a file and are compared in constant time. With no
key configured the service is open (a warning is logged at start-up) and rate limits apply per
client address instead. Rate limits use the ``limits`` library: in memory by default, or Redis
(``serve.rate_limit.storage=redis://...``) when several replicas must share the counts.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
import threading
import time
from dataclasses import dataclass

from fastapi import HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from limits import parse
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import MovingWindowRateLimiter

from musicgen_train.serve.security import SECRET_QUERY
from musicgen_train.serve.settings import ServeSettings

log = logging.getLogger(__name__)

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)
bearer = HTTPBearer(auto_error=False)
QUOTA_SCOPE_KEY = "musicgen.quota"  # where a request's Quota waits for middleware.QuotaHeaders


@dataclass(frozen=True)
class Quota:
    """Where a caller stands against the limit its request was charged to."""

    limit: int
    remaining: int
    reset: int  # seconds until the window frees a request (as Retry-After counts)

    def headers(self) -> dict[str, str]:
        """``X-RateLimit-*``, as GitHub's and OpenAI's APIs send them, so a client can slow
        down before it is refused (Reset: seconds from now, not a timestamp)."""
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset),
        }


class Guard:
    """Authenticates a request and charges it to its key's rate limit."""

    def __init__(self, settings: ServeSettings):
        self.keys = sorted(settings.api_keys())
        if not self.keys:
            log.warning(
                "no API key configured (%s or serve.auth.keys_file): the service is OPEN to "
                "anyone who can reach it",
                settings.auth.api_keys_env,
            )
        limits_cfg = settings.rate_limit
        self.limiter = MovingWindowRateLimiter(limit_storage(limits_cfg.storage))
        self.rates = {
            "generations": parse(limits_cfg.generations),
            "requests": parse(limits_cfg.requests),
            "failed_keys": parse(limits_cfg.failed_keys),
        }

    @property
    def open(self) -> bool:
        return not self.keys

    def identify(self, request: Request, key: str | None) -> str:
        """The identity a request is charged to; raises 401 (no key) or 403 (wrong key)."""
        address = f"addr:{request.client.host if request.client else 'unknown'}"
        if self.open:
            return address
        # A client that sent serve.rate_limit.failed_keys wrong or missing keys waits, whatever
        # it sends now: guessing keys gets no answer about them until the window has passed.
        failed = self.rates["failed_keys"]
        if not self.limiter.test(failed, "failed_keys", address):
            self._too_many(failed, "failed_keys", address, "failed API keys from this client")
        if not key:
            self.limiter.hit(failed, "failed_keys", address)
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                _missing_key_message(request),
                headers={"WWW-Authenticate": "Bearer"},
            )
        # Compare against every key, always, so timing says nothing about which one nearly matched.
        matches = [secrets.compare_digest(key.encode(), k.encode()) for k in self.keys]
        if not any(matches):
            self.limiter.hit(failed, "failed_keys", address)
            raise HTTPException(status.HTTP_403_FORBIDDEN, "invalid API key")
        # Counters are keyed by a hash: the key itself never lands in Redis.
        return "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]

    def charge(self, identity: str, kind: str) -> Quota:
        """Count a request of ``kind`` against ``identity``'s limit; 429 when it is spent."""
        rate = self.rates[kind]
        if self.limiter.hit(rate, kind, identity):
            return self.quota(rate, kind, identity)
        self._too_many(rate, kind, identity, kind)

    def quota(self, rate, kind: str, identity: str) -> Quota:
        stats = self.limiter.get_window_stats(rate, kind, identity)
        # An empty window's "reset" lies in the past (or is the whole window): clamped.
        reset = min(rate.get_expiry(), max(0, math.ceil(stats.reset_time - time.time())))
        return Quota(rate.amount, max(0, stats.remaining), reset)

    def _too_many(self, rate, kind: str, identity: str, what: str) -> None:
        quota = self.quota(rate, kind, identity)
        retry = max(1, quota.reset)
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"rate limit exceeded ({rate} for {what}): retry in {retry} s",
            headers={**quota.headers(), "Retry-After": str(retry)},
        )


def caller(kind: str):
    """A route dependency: the request's identity (``Guard.identify``), charged to its
    ``kind`` of limit ("generations" or "requests"); its ``Quota`` goes out as headers."""

    async def dependency(
        request: Request,
        api_key: str | None = Security(api_key_header),
        credentials=Security(bearer),
    ) -> str:
        guard = request.app.state.service.guard
        identity = guard.identify(request, presented_key(api_key, credentials))
        request.scope[QUOTA_SCOPE_KEY] = guard.charge(identity, kind)
        return identity

    return dependency


def limit_storage(uri: str):
    """The ``limits`` storage for ``uri``; ``memory://`` without a thread started per request.

    ``limits``' ``MemoryStorage`` drops expired entries from a ``threading.Timer`` of 10 ms that
    it starts again from whichever call finds the last one finished: under load that is a new
    thread about every 10 ms, started from the event loop, which waits in ``Thread.start`` until
    the thread runs (1-2 ms on a busy CPU, 18 % of a status request's time measured). Here one
    long-lived thread sweeps once a second instead. Entries are still checked against the clock
    on every hit, so limits are exact; the sweep only frees memory."""
    storage = storage_from_string(uri)
    if type(storage) is MemoryStorage and hasattr(storage, "_MemoryStorage__expire_events"):
        sweeper = threading.Thread(
            target=_sweep, args=(storage,), name="rate-limit-expiry", daemon=True
        )
        storage.timer = sweeper  # alive: the storage sees no need for a new timer
        sweeper.start()
    return storage


def _sweep(storage: MemoryStorage, every: float = 1.0) -> None:
    while True:
        time.sleep(every)
        storage._MemoryStorage__expire_events()


def owner_of(identity: str) -> str | None:
    """Who owns what a request creates (a job, an upload): its API key's identity; None on an
    open service (identities are client addresses there: anyone may read what anyone made)."""
    return identity if identity.startswith("key:") else None


def presented_key(
    api_key: str | None, credentials: HTTPAuthorizationCredentials | None
) -> str | None:
    """The key of a request's headers, without the spaces around it (a header value's edges
    are not part of it, RFC 9110 5.5; some servers pass trailing spaces on)."""
    key = api_key or (credentials.credentials if credentials else None)
    return key.strip() if key else None


def _missing_key_message(request: Request) -> str:
    how = "send it as 'X-API-Key: <key>' or 'Authorization: Bearer <key>'"
    if any(SECRET_QUERY.search(f"?{name}=") for name in request.query_params):
        # Never read from the URL: URLs land in access logs, proxies and browser history.
        return f"API keys in the URL are not accepted (URLs are logged): {how}"
    return f"missing API key: {how}"
