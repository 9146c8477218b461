"""Decode every item and decide whether it can be trained on; a rejected item carries its reason.

One corrupt file must never kill a run hours in: everything soundfile cannot read, every empty,
too short, silent or non-finite signal becomes a ``SkippedItem`` that the report lists.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from musicgen_train.audio import read_audio
from musicgen_train.data.items import AudioItem, SkippedItem


@dataclass
class DecodedItem:
    item: AudioItem
    audio: np.ndarray  # float32 [channels, samples], as stored in the file
    sample_rate: int

    @property
    def duration(self) -> float:
        return self.audio.shape[-1] / self.sample_rate


def read_bytes(item: AudioItem) -> bytes:
    """The encoded bytes of an item, whether it names a file or carries its data."""
    if item.data is not None:
        return bytes(item.data)
    return item.path.read_bytes()


def content_hash(raw: bytes) -> str:
    """What decides whether a file changed between two runs of prepare."""
    return hashlib.sha256(raw).hexdigest()


def peak_db(audio: np.ndarray) -> float:
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    return 20.0 * np.log10(peak) if peak > 0 else float("-inf")


def _looks_like_text(raw: bytes) -> bool:
    head = raw[:1024]
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def validate(
    item: AudioItem, raw: bytes, *, min_duration: float, silence_db: float
) -> DecodedItem | SkippedItem:
    """Decode ``raw`` (the item's bytes) and check it; never raises for bad audio."""

    def skip(reason: str) -> SkippedItem:
        return SkippedItem(source=item.source, reason=reason)

    if not raw:
        return skip("empty file (0 bytes)")
    try:
        audio, rate = read_audio(raw)
    except Exception as err:  # libsndfile raises several types for unreadable data
        if _looks_like_text(raw):
            return skip("not audio: the file holds text")
        return skip(f"cannot be decoded: {str(err).strip() or type(err).__name__}")
    if audio.shape[-1] == 0:
        return skip("empty: no audio samples")
    if not np.isfinite(audio).all():
        return skip("holds NaN/Inf samples")
    duration = audio.shape[-1] / rate
    if duration < min_duration:
        return skip(f"too short: {duration:.2f} s < data.min_duration={min_duration} s")
    level = peak_db(audio)
    if level < silence_db:
        return skip(f"silent: peak {level:.1f} dBFS < data.silence_db={silence_db} dBFS")
    return DecodedItem(item=item, audio=audio, sample_rate=rate)
