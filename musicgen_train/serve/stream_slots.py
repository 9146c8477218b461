"""A cap on the streams one caller keeps open at once (``serve.limits.max_streams_per_key``).

Every open stream (a job's events, its audio stream, a streamed generation) asks the job store
about its job several times a second while the job waits; the request rate limit counts only
how often streams are opened, so one key could hold hundreds open and keep the database busy.
Counts live in this process: each replica caps its own streams.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from fastapi import HTTPException, status
from fastapi.responses import StreamingResponse

RETRY_SECONDS = 5  # streams end with their jobs: no better estimate of when one frees


class StreamSlots:
    """Open streams per identity (a hashed API key, or a client address on an open service)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.open: dict[str, int] = {}
        self.lock = threading.Lock()

    def hold(self, identity: str) -> Callable[[], None]:
        """Take a slot for ``identity``, or 429 with Retry-After when it holds ``limit`` already.
        Returns the function that gives the slot back (calling it again does nothing)."""
        with self.lock:
            held = self.open.get(identity, 0)
            if held >= self.limit:
                raise HTTPException(
                    status.HTTP_429_TOO_MANY_REQUESTS,
                    f"too many open streams ({held} of at most {self.limit} per API key): "
                    f"close one, or retry in {RETRY_SECONDS} s",
                    headers={"Retry-After": str(RETRY_SECONDS)},
                )
            self.open[identity] = held + 1
        released = [False]  # under the lock: two callers (the body's end, a disconnect) race

        def release() -> None:
            with self.lock:
                if released[0]:
                    return
                released[0] = True
                left = self.open.get(identity, 1) - 1
                if left > 0:
                    self.open[identity] = left
                else:
                    self.open.pop(identity, None)

        return release

    def count(self, identity: str) -> int:
        with self.lock:
            return self.open.get(identity, 0)


class HeldStreamingResponse(StreamingResponse):
    """A streaming response that gives its stream slot back however it ends: finished, the
    client gone (Starlette cancels it, or the server's send raises), or never iterated (a body
    generator's ``finally`` would not run then)."""

    def __init__(self, content, *, release: Callable[[], None], **kwargs):
        super().__init__(content, **kwargs)
        self.release = release

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.release()


def held_stream(slots: StreamSlots, identity: str, respond: Callable[..., StreamingResponse]):
    """``respond(release=...)``'s streaming response, holding one of ``identity``'s slots; a
    response that fails to start (404, 409, 503) gives its slot back at once."""
    release = slots.hold(identity)
    try:
        return respond(release=release)
    except BaseException:
        release()
        raise
