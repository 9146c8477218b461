"""Cutting decoded audio into the fixed windows the codec encodes and training reads.

audiocraft 0.8 style: windows of ``segment_seconds`` every ``hop_seconds``; after the last full
window, a shorter tail is kept when it holds at least ``min_segment_ratio`` of a window. A file
shorter than one window (it already passed ``min_duration``) becomes a single short segment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from musicgen_train.audio import resample, to_channels


@dataclass(frozen=True)
class SegmentPlan:
    segment_seconds: float
    hop_seconds: float | None = None  # None: no overlap, hop = segment
    min_segment_ratio: float = 0.8

    @classmethod
    def from_config(cls, data_cfg) -> SegmentPlan:
        hop = data_cfg.get("hop_seconds")
        return cls(
            segment_seconds=float(data_cfg.segment_seconds),
            hop_seconds=None if hop is None else float(hop),
            min_segment_ratio=float(data_cfg.get("min_segment_ratio", 0.8)),
        )

    def windows(self, num_samples: int, sample_rate: int) -> list[tuple[int, int]]:
        """``(start, length)`` in samples of every window of a signal of ``num_samples``."""
        size = round(self.segment_seconds * sample_rate)
        hop = round((self.hop_seconds or self.segment_seconds) * sample_rate)
        if num_samples <= size:
            return [(0, num_samples)] if num_samples > 0 else []
        starts = range(0, num_samples - size + 1, hop)
        windows = [(start, size) for start in starts]
        tail_start = windows[-1][0] + hop
        tail = num_samples - tail_start
        if tail > 0 and tail >= self.min_segment_ratio * size:
            windows.append((tail_start, tail))
        return windows


@dataclass
class Segment:
    index: int  # position within its file
    offset: float  # seconds from the start of the file
    duration: float  # seconds
    audio: np.ndarray  # float32 [channels, samples] at the codec's rate


def conform(audio: np.ndarray, sample_rate: int, target_rate: int, channels: int) -> np.ndarray:
    """Downmix (or duplicate) to ``channels`` and resample to the codec's rate with soxr."""
    return resample(to_channels(audio, channels), sample_rate, target_rate)


def cut_segments(audio: np.ndarray, sample_rate: int, plan: SegmentPlan) -> list[Segment]:
    """Cut ``[channels, samples]`` (already at the codec's rate) into the plan's windows."""
    return [
        Segment(
            index=i,
            offset=start / sample_rate,
            duration=length / sample_rate,
            audio=np.ascontiguousarray(audio[:, start : start + length]),
        )
        for i, (start, length) in enumerate(plan.windows(audio.shape[-1], sample_rate))
    ]


def frames_for(num_samples: int, hop_length: int) -> int:
    """How many codec frames EnCodec produces for ``num_samples`` (it pads the last frame)."""
    return math.ceil(num_samples / hop_length)
