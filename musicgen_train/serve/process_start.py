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
import signal
import threading

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
    """Start the fork server now, from the main thread, so that it ignores SIGTERM.

    A supervisor's stop is SIGTERM to the whole process group. The server would die of it, and
    its generation processes' ends would then read as deaths (exit code 255), failing the jobs
    the service re-queues. An ignored signal stays ignored through fork and exec, and only the
    main thread may change a handler: SIGTERM is ignored for the moment the server takes to
    start (a fork and an exec), then the service's handler is back. The server exits when the
    service does; its processes ignore SIGTERM anyway (``child_main``)."""
    if start_context().get_start_method() != "forkserver":
        return
    if threading.current_thread() is not threading.main_thread():
        multiprocessing.forkserver.ensure_running()  # e.g. TestClient's lifespan thread
        return
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
