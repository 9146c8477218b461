"""Real processes for kill -9 tests without paying torch's and transformers' imports each time.

A test that kills a stage with SIGKILL needs a process of its own (no handler, no ``finally``
runs), but a fresh interpreter spends ~10 s importing the project before it does anything. The
children here are forked from multiprocessing's fork server, which imports the modules named in
``PRELOAD`` once: it runs no torch op, so no OpenMP pool exists to be broken by the fork. Each
child is then a real process that dies like any other.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from musicgen_train.serve.process_start import PRELOAD as SERVICE_PRELOAD

_CONTEXT = multiprocessing.get_context("forkserver")


@dataclass
class Finished:
    returncode: int  # -9 when SIGKILL ended it, as subprocess reports it
    output: str  # the child's stdout and stderr


# What the children import before they do anything: the stages (``cli`` below, the children of
# tests/prepare_killer.py), the service's generation processes and the model classes
# transformers imports lazily. One list for all: the first child of any test starts the one fork
# server of the pytest process (the service's own list serves if a service test comes first).
PRELOAD = [
    *SERVICE_PRELOAD,
    "musicgen_train.cli", "musicgen_train.config", "musicgen_train.sources.resolve",
    "musicgen_train.model.codec", "musicgen_train.registry.export",
    "musicgen_train.training.train", "prepare_killer",
]  # fmt: skip


def start(target: Callable, args: Sequence, log: Path, threads: int = 1, env: dict | None = None):
    """``target(*args)`` in a forked child with ``threads`` torch threads, its output appended
    to ``log``. The child has the fork server's environment (the test process's when the server
    started) unless ``env`` gives its own."""
    _CONTEXT.set_forkserver_preload(PRELOAD)
    options = (str(log), threads, env)
    process = _CONTEXT.Process(target=_child, args=(target, tuple(args), *options))
    process.start()
    return process


def run(target: Callable, args: Sequence, log: Path, timeout: float = 600, **options):
    """``start`` (``options``: its ``threads`` and ``env``), then wait for the child to end (it
    is killed past ``timeout``)."""
    process = start(target, args, log, **options)
    process.join(timeout)
    if process.exitcode is None:
        process.kill()
        process.join()
        raise TimeoutError(f"the child ran past {timeout} s: {log.read_text()[-2000:]}")
    return Finished(process.exitcode, log.read_text() if log.exists() else "")


def kill(process) -> bool:
    """SIGKILL ``process`` if it still runs (its exit code is then -9); False if it had ended."""
    with contextlib.suppress(ProcessLookupError):  # ended, and the fork server reaped it
        os.kill(process.pid, signal.SIGKILL)
    process.join()
    return process.exitcode == -signal.SIGKILL


def warm() -> None:
    """Start the fork server (its imports take a while), so that what is timed next is not."""
    _CONTEXT.set_forkserver_preload(PRELOAD)
    process = _CONTEXT.Process(target=time.sleep, args=(0,))
    process.start()
    process.join()


def cli(*argv: str) -> None:
    """``musicgen-train *argv``, as the console script runs it."""
    from musicgen_train.cli import main

    sys.exit(main(list(argv)))


def cli_killed_at_rename(suffix: str, nth: int, *argv: str) -> None:
    """``musicgen-train *argv`` that SIGKILLs itself when the ``nth`` file ending in ``suffix``
    is about to be renamed into place (its bytes complete, the rename not done), found with an
    audit hook, so it works whatever writes the file."""
    remaining = [nth]

    def hook(event, args):
        if event == "os.rename" and str(args[1]).endswith(suffix):
            remaining[0] -= 1
            if remaining[0] == 0:
                os.kill(os.getpid(), signal.SIGKILL)

    sys.addaudithook(hook)
    cli(*argv)


def _child(target: Callable, args: tuple, log: str, threads: int, env: dict | None) -> None:
    import tempfile

    import torch

    if env is not None:
        os.environ.clear()
        os.environ.update(env)
        tempfile.tempdir = None  # found again from TMPDIR
    torch.set_num_threads(threads)
    # A fork server the service started keeps SIGTERM blocked (serve/process_start.py), and its
    # children inherit the mask: a child here behaves like a process a user started.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    handle = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(handle, 1)
    os.dup2(handle, 2)
    target(*args)
