"""Audio clips to embed: a file, or a window of one (reference segments of the token cache)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from musicgen_train.audio import audio_info, load_audio


@lru_cache(maxsize=4096)
def _file_digest(path: str, size: int, mtime_ns: int, ctime_ns: int, inode: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes, memoised while its size, times and inode stay the same.

    The change time and inode are in the key because the modification time alone can be set
    back (``cp -p``, ``rsync -t``, ``touch -r``): a rewritten reference file of the same length
    would otherwise keep its old digest, and the embedding cache its old embeddings.
    """
    stat = Path(path).stat()
    return _file_digest(str(path), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)


@dataclass(frozen=True)
class Clip:
    path: Path
    offset: float = 0.0  # seconds
    duration: float | None = None  # seconds; None = to the end of the file
    name: str = ""

    def content_key(self) -> str:
        """What the clip holds: the file's content hash plus the window taken from it."""
        whole = self.offset == 0 and self.duration is None
        return file_digest(self.path) + ("" if whole else f"@{self.offset}+{self.duration}")

    def load(self) -> tuple[np.ndarray, int]:
        """``[channels, samples]`` at the file's own rate (embedders resample to theirs)."""
        _, rate, channels = audio_info(self.path)
        audio = load_audio(self.path, rate, channels)
        start = int(round(self.offset * rate))
        stop = None if self.duration is None else start + int(round(self.duration * rate))
        return audio[:, start:stop], rate
