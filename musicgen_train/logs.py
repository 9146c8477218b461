"""How the project logs: one prefix, library chatter turned down. A utility every layer may use.

Quiet defaults: a command prints one line per thing a user must know. What libraries print
about themselves (hardware they looked for, tables they created, settings they confirm) is
filtered where it is emitted, by logger and message; their warnings and errors still show.
"""

from __future__ import annotations

import logging
import os
import re
import sys

# (logger, message pattern) pairs dropped: each one a library talking about itself.
NOISE = {
    # Lightning's hardware census and confirmations of settings the user made.
    "lightning.pytorch.utilities.rank_zero": (
        r"(GPU|TPU|HPU) available: ",
        r"`Trainer\(\w+=1(\.0)?\)` was configured so ",
        r"💡 Tip:",
        r"Trainer already configured with model summary callbacks",  # ours: one line
        r"-{20,}\ndistributed_backend=",  # DDP's banner (rank_zero_info logs through this one)
    ),
    # DeepSpeed, imported to read DeepSpeed checkpoints, on a machine without a GPU.
    "DeepSpeed": (r"Setting accelerator to CPU\.",),
    # Each DDP process announcing itself.
    "lightning.fabric.utilities.distributed": (r"Initializing distributed: ",),
}
# Loggers that speak at INFO about their own housekeeping (MLflow creating its SQLite tables,
# alembic migrating them): warnings and errors only.
HOUSEKEEPING = ("mlflow.store.db.utils", "mlflow.store.db", "alembic")
# A progress bar redraws in place; in a log file each redraw is text. Off a terminal, tqdm
# redraws at most every this many seconds (its first and final state always show).
FILE_PROGRESS_SECONDS = 30


class DropNoise(logging.Filter):
    """Drop records whose message matches one of ``patterns`` (a logger-level filter)."""

    def __init__(self, patterns):
        super().__init__()
        self.pattern = re.compile("|".join(f"(?:{p})" for p in patterns))

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(str(record.msg))


class StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes, not the stream it was at setup:
    a notebook, a test runner or a supervisor that swaps stderr later still gets the lines, and a
    closed old stream never turns a log line into a "Logging error" traceback."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns one: always follow sys.stderr
        pass


def process_rank() -> int:
    """This process's global rank in a distributed run (0 when there is none), from the variables
    torchrun, SLURM and Lightning's launcher set before the process starts."""
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 0


def setup_logging() -> None:
    # Every process of a distributed run prepares, loads and trains alike: only rank 0 says so
    # (two CPU processes printed every line twice); the others still print errors.
    logging.basicConfig(
        level=logging.INFO if process_rank() == 0 else logging.ERROR,
        format="[musicgen-train] %(message)s",
        handlers=[StderrHandler()],
        force=True,
    )
    # transformers warns that MusicGen's pad id lies outside the codebook: it does by design.
    # Environment first, so a command that never loads a model never imports transformers.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:  # already imported: its settings were read, set them
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    quiet_libraries()


def quiet_libraries() -> None:
    """Filters on the libraries' own loggers (kept when they add handlers or set levels later)."""
    for name, patterns in NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropNoise) for f in logger.filters):
            logger.addFilter(DropNoise(patterns))
    for name in HOUSEKEEPING:
        logging.getLogger(name).setLevel(logging.WARNING)
    if not is_terminal():
        # tqdm reads TQDM_<ARGUMENT> as the default of each argument it is not given.
        os.environ.setdefault("TQDM_MININTERVAL", str(FILE_PROGRESS_SECONDS))


def is_terminal(stream=None) -> bool:
    """Whether progress can be drawn in place on ``stream`` (stderr, where tqdm writes): a TTY,
    or a Jupyter kernel's output (not a TTY, but the notebook redraws a bar in place)."""
    stream = sys.stderr if stream is None else stream
    if type(stream).__module__.startswith("ipykernel"):
        return True
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False
