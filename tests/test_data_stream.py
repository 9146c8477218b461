"""Streaming decode: block by block gives exactly the segments of the whole file, in bounded
memory whatever the file's length."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from musicgen_train.data import stream
from musicgen_train.data.items import AudioItem
from musicgen_train.data.segment import SegmentPlan, conform, cut_segments
from musicgen_train.data.stream import (
    conformed_blocks,
    hash_item,
    resampled_length,
    scan,
    stream_segments,
)
from musicgen_train.data.validate import validate, validate_stream

ROOT = Path(__file__).resolve().parents[1]


def noise_file(path: Path, seconds: float, rate: int, channels: int, seed: int = 0) -> np.ndarray:
    audio = 0.3 * np.random.default_rng(seed).standard_normal((int(seconds * rate), channels))
    sf.write(path, audio.astype(np.float32), rate, subtype="FLOAT")
    data, _ = sf.read(path, dtype="float32", always_2d=True)
    return np.ascontiguousarray(data.T)


@pytest.mark.parametrize(
    "rate, channels, out_channels, seconds, plan",
    [
        (44100, 2, 1, 7.3, SegmentPlan(2.0)),
        (48000, 1, 1, 5.05, SegmentPlan(1.5, hop_seconds=0.7, min_segment_ratio=0.5)),  # overlap
        (22050, 1, 2, 6.0, SegmentPlan(1.0, hop_seconds=1.6)),  # gaps between windows
        (32000, 2, 2, 3.999, SegmentPlan(1.0, min_segment_ratio=0.9)),  # no resampling
        (16000, 1, 1, 0.7, SegmentPlan(2.0)),  # shorter than a window
    ],
)
def test_streamed_segments_equal_those_of_the_whole_file(
    tmp_path, monkeypatch, rate, channels, out_channels, seconds, plan
):
    monkeypatch.setattr(stream, "BLOCK_FRAMES", 3001)  # many blocks, none aligned to a window
    path = tmp_path / "a.wav"
    whole = noise_file(path, seconds, rate, channels)
    expected = cut_segments(conform(whole, rate, 32000, out_channels), 32000, plan)
    total = resampled_length(whole.shape[-1], rate, 32000)
    with open(path, "rb") as handle:
        got = list(stream_segments(conformed_blocks(handle, 32000, out_channels), total, 32000,
                                   plan))  # fmt: skip
    assert len(got) == len(expected) > 0
    for a, b in zip(got, expected, strict=True):
        assert (a.index, a.offset, a.duration) == (b.index, b.offset, b.duration)
        np.testing.assert_array_equal(a.audio, b.audio)  # bit for bit: the same codes follow


@pytest.mark.parametrize("rates", [(44100, 32000), (32000, 16000), (11025, 32000), (96000, 32000)])
def test_resampled_length_is_what_soxr_gives(rates):
    rng = np.random.default_rng(1)
    for frames in [1, 2, 3, 7, 1001, *rng.integers(1, 50000, 20)]:
        x = rng.standard_normal((int(frames), 1)).astype(np.float32)
        expected = soxr.resample(x, *rates, quality="HQ").shape[0]
        assert resampled_length(int(frames), *rates) == expected


def test_scan_and_hash_agree_with_whole_file_reads(tmp_path, monkeypatch):
    import hashlib

    monkeypatch.setattr(stream, "BLOCK_FRAMES", 1000)
    monkeypatch.setattr(stream, "HASH_BLOCK", 777)
    path = tmp_path / "a.wav"
    whole = noise_file(path, 1.3, 8000, 2, seed=3)
    whole[1, 5000] = 0.99
    sf.write(path, whole.T, 8000, subtype="FLOAT")
    with open(path, "rb") as handle:
        info = scan(handle)
    assert (info.sample_rate, info.channels, info.frames) == (8000, 2, whole.shape[-1])
    assert info.peak == pytest.approx(float(np.abs(whole).max())) and info.finite
    item = AudioItem(key="a", source=str(path), path=path)
    assert hash_item(item) == hashlib.sha256(path.read_bytes()).hexdigest()
    # The streamed checks give the same reasons as whole-file ones.
    for audio, reason in [(np.zeros((1, 8000)), "silent"), (np.full((1, 800), np.nan), "NaN"),
                          (0.5 * np.ones((1, 800)), "too short")]:  # fmt: skip
        sf.write(path, audio.T.astype(np.float32), 8000, subtype="FLOAT")
        a = validate_stream(item, min_duration=0.5, silence_db=-60.0)
        b = validate(item, path.read_bytes(), min_duration=0.5, silence_db=-60.0)
        assert reason in a.reason and a.reason == b.reason


def _memory_bench():
    spec = importlib.util.spec_from_file_location("prepare_memory", ROOT / "bench" /
                                                  "prepare_memory.py")  # fmt: skip
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_memory_does_not_grow_with_the_files_length(tmp_path):
    """A real prepare process on 1 minute and on 5 minutes of stereo 44.1 kHz WAV: the peak
    resident memory may differ by a margin, not by the audio's size. Reading files whole made
    it grow ~65 MB per minute (3.9 GB for an hour): 4 minutes more decoded whole to float32 alone
    are 85 MB, so the bound of 60 MB fails loudly on whole-file reads (measured: +15 MB for 6
    minutes more)."""
    bench = _memory_bench()
    short = bench.measure(1, tmp_path)
    long = bench.measure(5, tmp_path)
    assert short["segments"] == 2 and long["segments"] == 10
    assert long["peak_rss_mb"] - short["peak_rss_mb"] < 60, (short, long)
