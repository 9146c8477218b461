"""How the service's generation processes start: forked from a fork server.

Not a plain fork of the service: it has threads (uvicorn, torch's pool) that fork would copy in
whatever state they are, and CUDA cannot be used in a forked child. Python's multiprocessing
fork server is a fresh interpreter with no threads and no CUDA that imports torch, transformers
and this package once (``PRELOAD``), then forks each generation process from itself: a process
that replaces a dead or hung one skips the ~5 s of imports that spawn pays at every start
(``bench/serve_restart.py``). Where there is no fork server (Windows), spawn.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import signal

# What a generation process imports before it loads a model; the fork server imports it once.
PRELOAD = [
    "musicgen_train.serve.generator",
    "transformers.models.musicgen.modeling_musicgen",
    "transformers.models.musicgen_melody.modeling_musicgen_melody",
    "transformers.models.encodec.modeling_encodec",
]


def start_context():
    """The multiprocessing context generation processes start from (see the module's text)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def start_fork_server() -> None:
    """Start the fork server unless it runs, with SIGTERM blocked in it for good; any thread.

    A supervisor's stop is SIGTERM to the whole process group. The server would die of it, and
    its generation processes' ends would then read as deaths (exit code 255), failing the jobs
    the service re-queues. So the server must not take SIGTERM, whichever thread starts it: the
    lifespan's at start-up, or a worker thread that replaces a generation process after the
    server itself died (the OOM killer), where multiprocessing starts a new one. Ignoring the
    signal (what this did before) can be set only from the main thread, so a server started
    again from a worker thread died of the next stop. A blocked signal can be set from any
    thread: the calling thread's mask passes through fork and exec, and the server never
    unblocks it (the stdlib's resource tracker starts the same way). The service misses
    nothing meanwhile: only this thread blocks it, and a pending SIGTERM arrives when the mask
    is restored. The server exits when the service does; its processes ignore SIGTERM and
    unblock it (``child_main``)."""
    if start_context().get_start_method() != "forkserver":
        return
    # The resource tracker first: its start blocks SIGINT and SIGTERM around its own spawn and
    # then unblocks both, which inside the block below would undo ours.
    multiprocessing.resource_tracker.ensure_running()
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
