"""Advisory file locks: one writer of a run folder or a token cache at a time.

An exclusive ``flock`` on a small file beside what it guards. The kernel drops it when its process
ends, however it ends (kill -9 included), so a lock is never stale; the file only says who held
it last (pid, host, since when), for the message the next process shows. Where there is no
``flock`` (Windows) nothing is locked.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None


class LockHeld(Exception):
    """The lock is held by another process; ``holder`` says which."""

    def __init__(self, holder: str):
        super().__init__(holder)
        self.holder = holder


@contextlib.contextmanager
def exclusive(
    path: Path, *, wait: bool = False, on_wait: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Hold ``path``'s lock for the block. Held elsewhere: ``wait=False`` raises ``LockHeld``;
    ``wait=True`` calls ``on_wait(holder)`` once, then blocks until it is free."""
    if fcntl is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held for the block)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            if not wait:
                raise LockHeld(holder) from None
            if on_wait is not None:
                on_wait(holder)
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {since}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # closing the file releases the lock
