"""Real processes for kill -9 tests without paying torch's and transformers' imports each time.

A test that kills a stage with SIGKILL needs a process of its own (no handler, no ``finally``
runs), but a fresh interpreter spends ~10 s importing the project before it does anything. The
children here are forked from multiprocessing's fork server, which imports the modules named in
``preload`` once: it runs no torch op, so no OpenMP pool exists to be broken by the fork. Each
child is then a real process that dies like any other.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

_CONTEXT = multiprocessing.get_context("forkserver")


@dataclass
class Finished:
    returncode: int  # -9 when SIGKILL ended it, as subprocess reports it
    output: str  # the child's stdout and stderr


def start(target: Callable, args: Sequence, log: Path, preload: Sequence[str] = ()):
    """``target(*args)`` in a forked child (one thread), its output appended to ``log``."""
    # Only the first call's preload reaches the server; later ones run it already started.
    _CONTEXT.set_forkserver_preload(list(preload))
    process = _CONTEXT.Process(target=_child, args=(target, tuple(args), str(log)))
    process.start()
    return process


def run(target: Callable, args: Sequence, log: Path, preload=(), timeout: float = 600):
    """``start``, then wait for the child to end (it is killed past ``timeout``)."""
    process = start(target, args, log, preload)
    process.join(timeout)
    if process.exitcode is None:
        process.kill()
        process.join()
        raise TimeoutError(f"the child ran past {timeout} s: {log.read_text()[-2000:]}")
    return Finished(process.exitcode, log.read_text() if log.exists() else "")


def _child(target: Callable, args: tuple, log: str) -> None:
    import torch

    torch.set_num_threads(1)  # the children of the subprocess version ran OMP_NUM_THREADS=1
    handle = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(handle, 1)
    os.dup2(handle, 2)
    target(*args)
