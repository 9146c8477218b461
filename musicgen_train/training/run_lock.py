"""One training run per run folder at a time.

A second ``python train.py`` of the same recipe (a second terminal, a job started twice) used to
move the first run's checkpoints aside as "earlier checkpoints" and then write its own into the
same folder, both runs' ``last.ckpt`` overwriting each other. The first process of a run (rank 0
of node 0; DDP workers take no lock) holds an advisory ``flock`` on ``<run_dir>/.train.lock``
while it trains. The kernel drops the lock when the process ends, however it ends (kill -9
included), so a lock is never stale; the file only says who held it last.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path

from musicgen_train.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not guarded there
    fcntl = None

LOCK_NAME = ".train.lock"


class RunInUseError(UserError):
    """Another process is training into the same run folder."""


@contextlib.contextmanager
def run_lock(run_dir: Path, first_process: bool = True):
    """Hold ``run_dir``'s lock for the block; a run folder in use is one clear error."""
    if fcntl is None or not first_process:
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / LOCK_NAME, "a+", encoding="utf-8")  # noqa: SIM115 (held for the block)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunInUseError(
                f"run folder {run_dir} is in use by another training run ({holder}): wait for "
                "it to end, or train into another folder (run_name=... or data.name=...)"
            ) from None
        handle.seek(0)
        handle.truncate()
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {since}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # closing the file releases the lock
