"""Reading torch checkpoint files without running code stored in them.

``torch.load(weights_only=False)`` runs whatever the file's pickle asks for, so a checkpoint
downloaded from a colleague or the web could run any command. Every checkpoint is read with
``weights_only=True`` instead, which rebuilds tensors and plain containers only, plus the few
classes below that checkpoints of this field really hold (OmegaConf configs, which audiocraft
pickles, and paths; Lightning checkpoints written by musicgen-train need none). A file that
needs anything else is refused in one line that names the class;
``MUSICGEN_TRAIN_TRUST_CHECKPOINTS=1`` loads a file you trust with a full unpickle.

DeepSpeed folders are consolidated by DeepSpeed's own code, which always unpickles fully, so
their files are scanned first (the scan executes nothing) and refused the same way.
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import re
from collections import OrderedDict, defaultdict
from contextlib import contextmanager
from pathlib import Path, PosixPath, PurePosixPath, PureWindowsPath, WindowsPath
from typing import Any

import torch
from torch.serialization import get_unsafe_globals_in_checkpoint, safe_globals

from musicgen_train.errors import UserError

log = logging.getLogger(__name__)

TRUST_ENV = "MUSICGEN_TRAIN_TRUST_CHECKPOINTS"

# Data classes only: rebuilding one sets fields, it cannot run a command. The builtin types and
# typing.Any appear because OmegaConf pickles the declared type of every node.
PLAIN_TYPES = [int, float, str, bool, bytes, list, dict, tuple, set, defaultdict, OrderedDict]
PLAIN_TYPES += [Any, PosixPath, WindowsPath, PurePosixPath, PureWindowsPath]
OMEGACONF_CLASSES = [
    "omegaconf.dictconfig.DictConfig",
    "omegaconf.listconfig.ListConfig",
    "omegaconf.base.ContainerMetadata",
    "omegaconf.base.Metadata",
    "omegaconf.nodes.AnyNode",
    "omegaconf.nodes.StringNode",
    "omegaconf.nodes.IntegerNode",
    "omegaconf.nodes.FloatNode",
    "omegaconf.nodes.BooleanNode",
    "omegaconf.nodes.BytesNode",
    "omegaconf.nodes.PathNode",
]
# What DeepSpeed's own optimizer files hold besides tensors (read by DeepSpeed, never by us).
DEEPSPEED_CLASSES = {
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.utils.tensor_fragment.fragment_address",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
}


UNSUPPORTED = re.compile(r"(?i)unsupported global:? (?:global )?([\w.]+)")


class UnsafeCheckpointError(UserError):
    """A checkpoint whose pickle asks for classes a safe load does not rebuild."""


def trusted() -> bool:
    """Whether the user has said to unpickle checkpoints fully (``TRUST_ENV`` set)."""
    return os.environ.get(TRUST_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def _importable(dotted: str) -> list:
    """``[(class, dotted)]`` when the class can be imported, else nothing (package absent)."""
    module, _, name = dotted.rpartition(".")
    try:
        return [(getattr(importlib.import_module(module), name), dotted)]
    except (ImportError, AttributeError):
        return []


def allowed_globals() -> list:
    found = list(PLAIN_TYPES)
    for dotted in OMEGACONF_CLASSES:
        found += _importable(dotted)
    return found


@contextmanager
def _allowlist():
    with safe_globals(allowed_globals()):
        yield


def unsafe_globals(path) -> list[str]:
    """The classes and functions the file's pickle names that a safe load refuses (read
    without executing the pickle); [] when the file cannot be scanned."""
    try:
        with _allowlist():
            return sorted(get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a zip checkpoint, or damaged: loading says why
        return []


def refusal(path: str | Path, names: list[str]) -> str:
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return (
        f"checkpoint {path} holds Python objects a safe load does not rebuild ({shown}); "
        f"a full unpickle could run code stored in the file. If you trust it, run again "
        f"with {TRUST_ENV}=1"
    )


def load(source, *, mmap: bool = False, name: str | Path | None = None):
    """``torch.load`` on the CPU with ``weights_only=True`` and the allowlist; see the module
    docstring. ``source`` is a path or an open binary file (``name`` says which file it is).
    Raises UnsafeCheckpointError for a file that needs more, else what torch raises."""
    if trusted():
        return torch.load(source, map_location="cpu", weights_only=False, mmap=mmap)
    try:
        with _allowlist():
            return torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        if hasattr(source, "seek"):
            source.seek(0)
        # The scan reads zip checkpoints only; torch's message names the global otherwise.
        names = unsafe_globals(source) or re.findall(UNSUPPORTED, str(err))
        if names:
            raise UnsafeCheckpointError(refusal(name or source, names)) from err
        raise  # a damaged pickle: the caller reports it as unreadable


def check_deepspeed_folder(folder: Path) -> None:
    """Refuse a DeepSpeed checkpoint folder whose files name anything beyond plain data, before
    DeepSpeed unpickles them fully."""
    if trusted():
        return
    for file in sorted(folder.rglob("*.pt")):
        names = [n for n in unsafe_globals(file) if n not in DEEPSPEED_CLASSES]
        if names:
            raise UnsafeCheckpointError(refusal(file, names))
