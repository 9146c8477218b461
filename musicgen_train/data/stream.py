"""Audio files decoded in blocks: memory stays the same whatever a file's length.

Prepare reads a file in up to three passes, none of which holds the whole file: a sha256 of its
bytes (skipped when size and modification time are unchanged), a scan that counts frames and
finds the peak and any NaN (validation), and the pass that downmixes, resamples with soxr's
streaming resampler and cuts the windows that go to the codec. soxr's ``ResampleStream`` gives
exactly the samples of a one-shot ``soxr.resample`` of the whole signal, so the codes are the
same as when files were read whole.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import soxr

from musicgen_train.audio import to_channels
from musicgen_train.data.decoding import Decoding, messages_note, truncation_note
from musicgen_train.data.items import AudioItem
from musicgen_train.data.paths import open_regular
from musicgen_train.data.segment import Segment, SegmentPlan


class FileChanged(OSError):
    """A file decoded to another length than it had when it was checked: it is still being
    copied, downloaded or saved. ``str()`` is the report's reason."""


BLOCK_FRAMES = 1 << 16  # frames decoded at a time (~0.5 MB for stereo float32)
HASH_BLOCK = 1 << 20


@contextmanager
def open_item(item: AudioItem):
    """A binary file object over the item's bytes: its file (regular files only) or its data."""
    handle = io.BytesIO(bytes(item.data)) if item.data is not None else open_regular(item.path)
    try:
        yield handle
    finally:
        handle.close()


def hash_item(item: AudioItem) -> str:
    """sha256 of the item's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open_item(item) as handle:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class AudioScan:
    sample_rate: int
    channels: int
    frames: int
    peak: float  # max |sample| over the file
    finite: bool  # no NaN or Inf anywhere
    truncated: str | None = None  # how much of a truncated or damaged file was kept
    decoder: str | None = None  # what the decoder printed about the file

    def notes(self) -> dict:
        """The manifest's record of what the report says about the file (kept on reuse)."""
        notes = {"file_adjusted": self.truncated, "file_warning": self.decoder}
        return {key: note for key, note in notes.items() if note}

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def scan(handle, messages: list[str] | None = None) -> AudioScan:
    """Decode ``handle`` block by block, keeping only counts (raises what soundfile raises when
    nothing decodes). What the decoder prints goes into ``messages`` and the scan's note."""
    messages = [] if messages is None else messages
    frames, peak, finite = 0, 0.0, True
    with Decoding(handle, messages) as reading:
        rate, channels = int(reading.audio.samplerate), int(reading.audio.channels)
        for block in reading.blocks(BLOCK_FRAMES):
            frames += block.shape[0]
            if not np.isfinite(block).all():
                finite = False
            elif block.size:
                peak = max(peak, float(np.max(np.abs(block))))
        truncated = truncation_note(reading)
    return AudioScan(rate, channels, frames, peak, finite, truncated, messages_note(messages))


def read_head(handle, seconds: float) -> tuple[np.ndarray, int]:
    """The first ``seconds`` of a file (as far as it decodes) as float32 ``[channels, samples]``
    and its rate."""
    with Decoding(handle, []) as reading:
        rate, channels = int(reading.audio.samplerate), reading.audio.channels
        wanted, have, parts = int(seconds * rate), 0, []
        for block in reading.blocks(BLOCK_FRAMES):
            parts.append(block[: wanted - have])
            have += len(parts[-1])
            if have >= wanted:
                break
        data = np.concatenate(parts) if parts else np.zeros((0, channels), np.float32)
        return np.ascontiguousarray(data.T), rate


def resampled_length(frames: int, rate_in: int, rate_out: int) -> int:
    """How many samples soxr gives for ``frames`` (the ratio rounded, halves up)."""
    return (2 * frames * rate_out + rate_in) // (2 * rate_in)


def conformed_blocks(handle, rate_out: int, channels: int) -> Iterator[np.ndarray]:
    """``[channels, n]`` float32 blocks at ``rate_out``: downmixed, then resampled (soxr HQ)."""
    with Decoding(handle, []) as reading:  # its messages were reported by the scan
        rate_in = int(reading.audio.samplerate)
        stream = None
        if rate_in != rate_out:
            stream = soxr.ResampleStream(rate_in, rate_out, channels, dtype="float32", quality="HQ")
        blocks = reading.blocks(BLOCK_FRAMES)
        block = next(blocks, None)
        while block is not None:
            following = next(blocks, None)
            mixed = to_channels(np.ascontiguousarray(block.T), channels)
            if stream is None:
                yield mixed
            else:
                out = stream.resample_chunk(np.ascontiguousarray(mixed.T), last=following is None)
                out = np.asarray(out, dtype=np.float32).reshape(-1, channels)
                yield np.ascontiguousarray(out.T)
            block = following


def stream_segments(
    blocks: Iterator[np.ndarray], total: int, sample_rate: int, plan: SegmentPlan
) -> Iterator[Segment]:
    """The plan's windows of a signal of ``total`` samples arriving in ``blocks``; the same
    segments ``cut_segments`` makes of the whole signal, holding at most a window and a block."""
    windows = plan.windows(total, sample_rate)
    buffer, buffer_start, index, seen = None, 0, 0, 0
    for block in blocks:
        seen += block.shape[-1]
        buffer = block if buffer is None else np.concatenate([buffer, block], axis=1)
        while index < len(windows) and sum(windows[index]) <= buffer_start + buffer.shape[-1]:
            start, length = windows[index]
            at = start - buffer_start
            audio = np.ascontiguousarray(buffer[:, at : at + length])
            yield Segment(index, start / sample_rate, length / sample_rate, audio)
            index += 1
        keep = windows[index][0] - buffer_start if index < len(windows) else buffer.shape[-1]
        keep = min(max(keep, 0), buffer.shape[-1])
        buffer, buffer_start = buffer[:, keep:], buffer_start + keep
    if index != len(windows) or seen != total:
        raise FileChanged(
            f"changed while it was read (expected {total / sample_rate:.2f} s of audio, decoded "
            f"{seen / sample_rate:.2f} s): re-run prepare once it is complete"
        )
