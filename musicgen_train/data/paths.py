"""What a path is, before anything reads it: a regular file, or the reason it cannot be one.

A folder of audio can hold anything a file system can: symlink loops, dangling symlinks, named
pipes and devices with audio names, folders called ``take.wav``, files nobody may read. None of
them may be dropped silently, and none may hang prepare (opening a FIFO blocks until a writer
comes), so every path is classified here from ``stat``, and files are opened non-blocking and
checked again on the open descriptor (the path may change between the two).
"""

from __future__ import annotations

import errno
import os
import stat
import unicodedata
from pathlib import Path
from typing import BinaryIO

_KINDS = (
    (stat.S_ISDIR, "a folder, not an audio file (the files inside it are read on their own)"),
    (stat.S_ISFIFO, "a named pipe (FIFO), not a file: not read, it could block forever"),
    (stat.S_ISCHR, "a character device, not a file: not read"),
    (stat.S_ISBLK, "a block device, not a file: not read"),
    (stat.S_ISSOCK, "a socket, not a file: not read"),
)


class NotReadable(OSError):
    """A path that is not a readable regular file; ``str()`` is the report's reason."""


def _kind_problem(mode: int) -> str | None:
    return next((reason for test, reason in _KINDS if test(mode)), None)


def _stat_problem(path: Path, err: OSError) -> str:
    if err.errno == errno.ELOOP:
        return "a symlink loop: following its links never reaches a file"
    if os.path.islink(path):
        return f"a dangling symlink: its target {os.readlink(path)} does not exist"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "cannot be read: permission denied"
    return f"cannot be read: {err.strerror or err}"


def file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as a file, or None when it is a readable regular file."""
    if problem := name_problem(path):
        return problem
    try:
        info = os.stat(path)  # follows symlinks
    except OSError as err:
        return _stat_problem(path, err)
    problem = _kind_problem(info.st_mode)
    if problem is None and not os.access(path, os.R_OK):
        return "cannot be read: permission denied"
    return problem


def name_problem(path: Path) -> str | None:
    """A path that is not UTF-8 (a Latin-1 name from an old zip, CD rip or Windows share):
    Python holds its bad bytes as surrogates, which no manifest line or file id can encode."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return (f"the path is not valid UTF-8 ({os.fsencode(path)!r}): rename it, e.g. with "
                "convmv -f latin1 -t utf-8 --notest -r <folder>")  # fmt: skip
    return None


def on_disk(path: Path) -> Path:
    """``path`` as the disk spells it. "é" typed on Linux or Windows is one code point (NFC);
    a file copied from a Mac often has "e" plus an accent (NFD): the names look the same, so a
    caption table written by hand must find the file either way."""
    if os.path.lexists(path):
        return path
    variants = (Path(unicodedata.normalize(form, str(path))) for form in ("NFC", "NFD"))
    return next((v for v in variants if os.path.lexists(v)), path)


def file_identity(path: Path) -> tuple[int, int] | None:
    """The file a path reaches, whatever links lead there (device, inode); None if unreachable."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def open_regular(path: Path) -> BinaryIO:
    """Open ``path`` for reading if it is a regular file; never blocks on a FIFO. Raises
    ``NotReadable`` with the reason otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as err:
        raise NotReadable(_stat_problem(Path(path), err)) from err
    try:
        problem = _kind_problem(os.fstat(fd).st_mode)
        if problem is not None:
            raise NotReadable(problem)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
