"""Early first audio: a short first chunk, and the chunks of many streams decoded in one call.

The first chunk is ``first_chunk_frames`` long (later ones ``chunk_frames``); deferred streamers
mark their windows due and ``decode_due`` decodes the windows of the same length together. The
audio must be what the streamer decodes by itself, and must still join into the whole clip.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import torch
from serve_helpers import non_causal_tiny_engine, one_torch_thread  # noqa: F401 - a fixture

from musicgen_train.generation import GenerationParams
from musicgen_train.generation.streaming import CodecStreamer, decode_due
from musicgen_train.serve.continuous import JobSpec, Scheduler, collect
from musicgen_train.serve.settings import StreamSettings

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HOP = 640  # the tiny codec: 32 kHz, 50 frames/s
K = 4  # codebooks


@pytest.fixture(scope="module")
def engine():
    return non_causal_tiny_engine()


def codes_of(engine, prompts, duration: float) -> torch.Tensor:
    """Sampled tokens ``[steps + 1, batch, K]`` in delay-pattern order, as ``put`` gets them."""
    loop = engine.new_loop()
    params = GenerationParams(duration=duration, guidance_scale=1.0)
    rows = [engine.add(loop, p, params, seed=i) for i, p in enumerate(prompts)]
    while loop.rows:
        loop.step()
    columns = []
    for step in range(rows[0].tokens.shape[-1]):
        column = [
            torch.where(r.pattern[:, step] == -1, r.tokens[:, step], r.pattern[:, step])
            for r in rows
        ]
        columns.append(torch.stack(column))
    return torch.stack(columns), engine.decode(rows)


def streamer(engine, steps: int, samples: int, chunks: list, **options) -> CodecStreamer:
    return CodecStreamer(
        engine.model,
        batch_size=1,
        max_new_tokens=steps,
        num_samples=samples,
        on_audio=lambda _i, audio: chunks.append(audio),
        chunk_frames=10,
        context_frames=15,
        lookahead_frames=3,
        crossfade_frames=2,
        **options,
    )


def test_the_first_chunk_is_short_and_the_stream_still_joins_into_the_clip(engine):
    columns, full = codes_of(engine, ["a"], 1.0)
    steps, samples = columns.shape[0] - 1, full.shape[-1]
    chunks, heard_at = [], None
    s = streamer(engine, steps, samples, chunks, first_chunk_frames=2)
    for step, column in enumerate(columns):
        s.put(column)
        if chunks and heard_at is None:
            heard_at = step
    s.end()
    # 2 frames + 3 held back + the delay pattern's K - 1 steps
    assert heard_at == 2 + 3 + K - 1
    sizes = [c.shape[-1] for c in chunks]
    assert sizes[0] == 2 * HOP and sizes[1] == 10 * HOP  # first short, then chunk_frames
    streamed = np.concatenate(chunks, axis=-1)
    assert streamed.shape == full[0].shape == (1, 32000)
    error = np.sqrt(np.mean((streamed - full[0]) ** 2))
    assert error < 1e-3 * np.sqrt(np.mean(full[0] ** 2))


def test_deferred_windows_decoded_together_equal_each_decoded_alone(engine):
    columns, full = codes_of(engine, ["a", "bb", "ccc"], 0.6)
    steps, samples = columns.shape[0] - 1, full.shape[-1]
    alone = [[] for _ in range(3)]
    together = [[] for _ in range(3)]
    plain = [streamer(engine, steps, samples, alone[i], first_chunk_frames=4) for i in range(3)]
    deferred = [
        streamer(engine, steps, samples, together[i], first_chunk_frames=4, defer=True)
        for i in range(3)
    ]
    calls = []
    for column in columns:
        for i in range(3):
            plain[i].put(column[i : i + 1])
            deferred[i].put(column[i : i + 1])
        due = sum(d.due is not None for d in deferred)
        assert due in (0, 3)  # rows that joined together reach each border together
        calls.append(decode_due(deferred))
        assert all(d.due is None for d in deferred)
    for s in plain + deferred:
        s.end()
    # one codec call per border for the three streams: the first chunk, then every 10 frames
    assert sum(calls) == 1 + (30 - 4 - 3) // 10
    for i in range(3):
        assert [c.shape for c in together[i]] == [c.shape for c in alone[i]]
        np.testing.assert_allclose(
            np.concatenate(together[i], -1), np.concatenate(alone[i], -1), atol=1e-5
        )


def test_concurrent_streams_hear_a_short_first_chunk_from_one_codec_call(engine):
    stream = StreamSettings(
        chunk_seconds=0.2, first_chunk_seconds=0.04, context_seconds=0.3, lookahead_frames=3
    )
    events, emit = collect()
    scheduler = Scheduler({"tiny": engine}, stream, emit, max_rows=4)
    ids = [f"s{i}" for i in range(4)]
    for i, job_id in enumerate(ids):
        params = {"duration": 0.5, "guidance_scale": 3.0, "seed": i, "top_k": 250}
        assert scheduler.add(JobSpec(job_id, "tiny", f"prompt {i}", params, "wav", True))
    first_audio_step, by_job = {}, {job_id: [] for job_id in ids}
    for step in range(1, 200):
        scheduler.step()
        for event in events:
            by_job[event[1]].append(event)
            if event[0] == "job_audio":
                first_audio_step.setdefault(event[1], step)
        events.clear()
        if all(by_job[j] and by_job[j][-1][0] == "job_done" for j in ids):
            break
    # 2 frames + 3 held back + K - 1 delay steps, for all four at once
    assert first_audio_step == {job_id: 2 + 3 + K - 1 for job_id in ids}
    for job_id in ids:
        pcm = [e[2] for e in by_job[job_id] if e[0] == "job_audio"]
        assert len(pcm[0]) == 2 * HOP * 2  # 2 frames of 16-bit mono samples
        streamed = np.frombuffer(b"".join(pcm), dtype="<i2").astype(np.float32) / 32767
        stored, _ = sf.read(io.BytesIO(by_job[job_id][-1][2].data), dtype="float32")
        assert streamed.shape == stored.shape == (16000,)
        scale = np.sqrt(np.mean(stored**2))
        assert np.sqrt(np.mean((streamed - stored) ** 2)) < 1e-3 * scale + 1 / 32767
    # borders at 2, 12 and 22 frames, each one codec call for the four streams; the rest
    # (frames 22..25, at the end) is each stream's own decode
    assert scheduler.codec_calls == 3
