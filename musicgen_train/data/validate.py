"""Decode every item and decide whether it can be trained on; a rejected item carries its reason.

One corrupt file must never kill a run hours in: everything soundfile cannot read, every empty,
too short, silent or non-finite signal becomes a ``SkippedItem`` that the report lists. Prepare
uses ``validate_stream`` (the file decoded block by block, never held whole); ``validate`` applies
the same rules to bytes already in memory.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np

from musicgen_train.audio import read_audio
from musicgen_train.data.decoding import messages_note
from musicgen_train.data.items import AudioItem, SkippedItem
from musicgen_train.data.paths import NotReadable
from musicgen_train.data.stream import AudioScan, open_item, scan


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


# Below this a header's sample rate is corrupt, not a recording: resampled to the codec's rate,
# such "audio" would be encoded as a slow rumble (8 kHz is the lowest rate of real recordings).
MIN_SAMPLE_RATE = 4000


def _judge(info: AudioScan, *, min_duration: float, silence_db: float) -> str | None:
    """The reason a decoded signal cannot be trained on, or None."""
    if info.frames == 0:
        cut = " (the file ends mid-stream: truncated before its first audio)"
        return "empty: no audio samples" + (cut if info.truncated else "")
    if not info.finite:
        return "holds NaN/Inf samples"
    if info.sample_rate < MIN_SAMPLE_RATE:
        return (f"sample rate {info.sample_rate} Hz is below {MIN_SAMPLE_RATE} Hz: a corrupt "
                "header? (real recordings are 8 kHz or more)")  # fmt: skip
    return judge_level(info.duration, info.peak, min_duration=min_duration, silence_db=silence_db)


def judge_level(
    duration: float, peak: float, *, min_duration: float, silence_db: float
) -> str | None:
    """The reason a signal of this length and peak is not kept (too short, silent), or None;
    also applied to a file whose codes a cache holds, so that the limits of this run apply."""
    if duration < min_duration:
        return f"too short: {_down(duration, 2)} s < data.min_duration={min_duration} s"
    level = 20.0 * np.log10(peak) if peak > 0 else float("-inf")
    if level < silence_db:
        return f"silent: peak {_down(level, 1)} dBFS < data.silence_db={silence_db} dBFS"
    return None


def _down(value: float, decimals: int) -> str:
    """``value`` rounded down, so that a value just under a limit never prints as the limit
    (0.9998 s is "0.99 s < 1.0", not "1.00 s < 1.0")."""
    if not np.isfinite(value):
        return str(value)
    scale = 10**decimals
    return f"{np.floor(round(value * scale, 6)) / scale:.{decimals}f}"  # 0.29 * 100 = 28.99..


UNFINISHED_BYTES = 64 * 1024  # more than any header holds without audio


def _unfinished(size: int) -> str:
    """A header that counts no samples in a file of some size: a recorder or a program that
    stopped before it wrote the header's lengths (they come last), and libsndfile trusts them."""
    return (f"empty: the header counts no audio samples, yet the file holds {size / 1e6:.1f} MB "
            "(a recording whose header was never finished? repair it, e.g. with sox "
            "--ignore-length, to use it)")  # fmt: skip


def _undecodable(err: Exception, head: bytes, messages: list[str] | None = None) -> str:
    if _looks_like_text(head):
        return "not audio: the file holds text"
    said = messages_note(messages or [])
    # soundfile names the handle ("Error opening <_io.BufferedReader name=...>: ..."): the
    # report's line already names the file
    reason = re.sub(r"^Error opening <.*?>: ", "", str(err).strip()) or type(err).__name__
    return f"cannot be decoded: {reason}" + (f" ({said})" if said else "")


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
        return skip(_undecodable(err, raw[:1024]))
    finite = bool(np.isfinite(audio).all())
    peak = float(np.max(np.abs(audio))) if audio.size and finite else 0.0
    info = AudioScan(rate, audio.shape[0], audio.shape[-1], peak, finite)
    reason = _judge(info, min_duration=min_duration, silence_db=silence_db)
    return skip(reason) if reason else DecodedItem(item=item, audio=audio, sample_rate=rate)


def validate_stream(
    item: AudioItem, *, min_duration: float, silence_db: float
) -> AudioScan | SkippedItem:
    """Decode the item block by block and check it, holding no more than a block; never raises
    for bad audio or a path that is not a readable file."""

    def skip(reason: str) -> SkippedItem:
        return SkippedItem(source=item.source, reason=reason)

    try:
        with open_item(item) as handle:
            head = handle.read(1024)
            if not head:
                return skip("empty file (0 bytes)")
            handle.seek(0)
            messages: list[str] = []
            try:
                info = scan(handle, messages)
            except Exception as err:  # libsndfile raises several types for unreadable data
                return skip(_undecodable(err, head, messages))
            if info.frames == 0 and handle.seek(0, 2) >= UNFINISHED_BYTES:
                return skip(_unfinished(handle.tell()))
    except NotReadable as err:
        return skip(str(err))
    except OSError as err:
        return skip(f"cannot be read: {err.strerror or err}")
    reason = _judge(info, min_duration=min_duration, silence_db=silence_db)
    return skip(reason) if reason else info
