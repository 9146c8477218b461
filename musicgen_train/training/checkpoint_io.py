"""Checkpoint files that are whole or absent, whenever the process dies.

Lightning's own writer goes through an fsspec transaction whose temporary file lies in the
system's temp folder (``/tmp``) and is moved into place afterwards: a kill during the write
leaves that file there for good, and a move across file systems is a copy, which a kill can cut
short. Here the bytes go to a temporary file in the checkpoint's own folder, are flushed to
disk, and ``os.replace`` puts them in place in one step; a kill leaves the previous checkpoint
intact plus at most one ``.saving-*.tmp`` file, which the next run removes when it starts
(:func:`remove_stale_temporaries`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from musicgen_train.errors import UserError

log = logging.getLogger(__name__)

TEMP_PREFIX = ".saving-"
TEMP_SUFFIX = ".tmp"


def _is_local(path: str | os.PathLike) -> bool:
    return "://" not in str(path)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic (remote URLs keep Lightning's way)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        if storage_options is not None or not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_save(checkpoint, Path(path))

    def load_checkpoint(
        self, path: str | os.PathLike, *args: Any, weights_only: bool | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        if weights_only is None:
            weights_only = default_weights_only()
        return super().load_checkpoint(path, *args, weights_only=weights_only, **kwargs)


def default_weights_only() -> bool | None:
    """What ``torch.load`` is given when Lightning leaves ``weights_only`` unset (every resume).

    torch < 2.6 loads whole pickles by default and says so with a FutureWarning on each load
    (Lightning 2.6 no longer passes ``weights_only=False`` itself): the same load, said
    explicitly, so the warning goes. torch >= 2.6 loads weights only by default, which fits our
    checkpoints; None keeps that default, and with it TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD."""
    return False if _torch_version() < (2, 6) else None


def _torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split(".")[:2]
    return int(major), int(minor)


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save(obj, path)``, all or nothing: a temp file beside it, fsync, ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX)
    try:
        os.chmod(temp, 0o666 & ~_umask())  # mkstemp's 0600 -> what open() would have given
        with os.fdopen(fd, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        full = _disk_full(err)
        if full is None:
            raise
        # A full disk (or quota, or file size limit) surfaces as a chain of torch's zip writer
        # errors ending in OSError: one line instead, naming the folder and what is left there.
        free = shutil.disk_usage(path.parent).free / 1e6
        raise UserError(
            f"checkpoint {path} could not be written: {full.strerror} ({free:.0f} MB free in "
            f"{path.parent}); the previous {path.name}, if any, is untouched: make room and "
            "resume with ckpt_path=last"
        ) from err
    _fsync_folder(path.parent)  # the rename itself reaches the disk


def _disk_full(err: BaseException | None) -> OSError | None:
    """The OSError saying the disk (or a quota, or RLIMIT_FSIZE) is full, anywhere in the chain."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _FULL:
            return err
        err = err.__cause__ or err.__context__
    return None


_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete what saves killed midway left in ``folder``; returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for temp in sorted(folder.glob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}")):
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
            removed.append(temp)
    if removed:
        log.info(
            "removed %d unfinished checkpoint file(s) in %s (a save was interrupted)",
            len(removed),
            folder,
        )
    return removed
