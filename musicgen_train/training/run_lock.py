"""One training run per run folder at a time.

A second ``python train.py`` of the same recipe (a second terminal, a job started twice) used to
move the first run's checkpoints aside as "earlier checkpoints" and then write its own into the
same folder, both runs' ``last.ckpt`` overwriting each other. The first process of a run (rank 0
of node 0; DDP workers take no lock) holds ``<run_dir>/.train.lock`` (``locks.exclusive``) while
it trains; a second run is one clear line and touches nothing.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from musicgen_train.errors import UserError
from musicgen_train.locks import LockHeld, exclusive

LOCK_NAME = ".train.lock"


class RunInUseError(UserError):
    """Another process is training into the same run folder."""


@contextlib.contextmanager
def run_lock(run_dir: Path, first_process: bool = True):
    """Hold ``run_dir``'s lock for the block; a run folder in use is one clear error."""
    if not first_process:
        yield
        return
    with contextlib.ExitStack() as held_for_the_block:
        try:
            held_for_the_block.enter_context(exclusive(run_dir / LOCK_NAME))
        except LockHeld as held:
            raise RunInUseError(
                f"run folder {run_dir} is in use by another training run ({held.holder}): wait "
                "for it to end, or train into another folder (run_name=... or data.name=...)"
            ) from None
        yield
