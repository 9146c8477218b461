"""Streaming: incremental codec decoding matches the full decode, and the HTTP WAV stream parses."""

from __future__ import annotations

import io
import struct
import threading
import time

import numpy as np
import pytest
import soundfile as sf
import torch
from fastapi.testclient import TestClient
from serve_helpers import (  # noqa: F401 - one_torch_thread is a fixture
    make_settings,
    non_causal_tiny_engine,
    one_torch_thread,
    served,
    wait_for,
)
from transformers import StoppingCriteriaList

from musicgen_train.generation import GenerationEngine, GenerationParams
from musicgen_train.generation.streaming import CodecStreamer, TokenFeed
from musicgen_train.serve.app import create_app
from musicgen_train.serve.streaming import UNKNOWN_SIZE, to_pcm16

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def non_causal_engine():
    return non_causal_tiny_engine()


def stream_generate(engine, prompts, params, **options):
    """Run generate with a CodecStreamer; returns the full audio and each item's chunks."""
    kwargs = engine._generate_kwargs(params)
    chunks: dict[int, list[np.ndarray]] = {i: [] for i in range(len(prompts))}
    progress: list[tuple[int, int]] = []
    streamer = CodecStreamer(
        engine.model,
        batch_size=len(prompts),
        max_new_tokens=kwargs["max_new_tokens"],
        num_samples=int(round(params.duration * engine.sample_rate)),
        on_audio=lambda i, audio: chunks[i].append(audio),
        on_progress=lambda step, total: progress.append((step, total)),
        **options,
    )
    full = engine.generate(
        prompts, params, stopping_criteria=StoppingCriteriaList([TokenFeed(streamer)])
    )
    streamer.end()
    return full, chunks, progress


@pytest.mark.parametrize("lookahead", [3, 6])
def test_streamed_chunks_match_the_full_decode(non_causal_engine, lookahead):
    params = GenerationParams(duration=1.2, seed=3, guidance_scale=1.0)
    full, chunks, progress = stream_generate(
        non_causal_engine,
        ["a", "bb"],
        params,
        chunk_frames=10,
        context_frames=15,
        lookahead_frames=lookahead,
        crossfade_frames=2,
    )
    total = progress[-1][1]
    assert progress[-1] == (total, total) and total == 60 + 4 - 1
    for index in range(2):
        pieces = chunks[index]
        assert len(pieces) >= 5  # it really streamed: several chunks before the end
        streamed = np.concatenate(pieces, axis=-1)
        reference = full[index]
        assert streamed.shape == reference.shape == (1, int(1.2 * 32000))
        scale, peak = np.sqrt(np.mean(reference**2)), np.abs(reference).max()
        error = np.sqrt(np.mean((streamed - reference) ** 2))
        # Decoding 10-frame chunks independently is off by ~7e-3 here; windows with context,
        # lookahead and crossfade by ~1e-5.
        assert error < 1e-3 * scale, (error, scale)
        # No click at a border: around each border the stream follows the full decode, and
        # the jump across it is what the full decode has there.
        borders = np.cumsum([p.shape[-1] for p in pieces])[:-1]
        for border in borders:
            near = slice(border - 64, border + 64)
            assert np.abs(streamed[:, near] - reference[:, near]).max() < 1e-3 * peak
        jumps = np.abs(streamed[0, borders] - streamed[0, borders - 1])
        expected = np.abs(reference[0, borders] - reference[0, borders - 1])
        assert np.all(jumps <= expected + 1e-3 * peak), (jumps, expected)


def test_streaming_does_not_change_the_generated_audio(tiny_loaded):
    engine = GenerationEngine(tiny_loaded)
    params = GenerationParams(duration=0.4, seed=11)
    plain = engine.generate(["x"], params)
    streamed_full, chunks, _ = stream_generate(engine, ["x"], params, chunk_frames=5)
    np.testing.assert_array_equal(plain, streamed_full)
    np.testing.assert_allclose(np.concatenate(chunks[0], -1), plain[0], atol=1e-4)


def parse_wav_stream(data: bytes) -> tuple[dict, np.ndarray]:
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    assert struct.unpack("<I", data[4:8])[0] == UNKNOWN_SIZE
    assert data[12:16] == b"fmt "
    fmt_size = struct.unpack("<I", data[16:20])[0]
    tag, channels, rate, byte_rate, align, bits = struct.unpack("<HHIIHH", data[20:36])
    data_at = 20 + fmt_size
    assert data[data_at : data_at + 4] == b"data"
    assert struct.unpack("<I", data[data_at + 4 : data_at + 8])[0] == UNKNOWN_SIZE
    header = {
        "tag": tag,
        "channels": channels,
        "rate": rate,
        "byte_rate": byte_rate,
        "align": align,
        "bits": bits,
    }
    # / 32768: how libsndfile reads 16-bit PCM as float, so samples compare with sf.read's
    pcm = np.frombuffer(data[data_at + 8 :], dtype="<i2").astype(np.float32) / 32768
    return header, pcm


def test_http_stream_is_a_wav_stream_matching_the_stored_audio(
    tmp_path, tiny_model_dir, tiny_loaded
):
    settings = make_settings(tmp_path, tiny_model_dir)
    with TestClient(create_app(settings, served(tiny_loaded))) as client:
        pieces = []
        with client.stream(
            "POST", "/v1/generations/stream", json={"prompt": "drums", "duration": 0.6, "seed": 5}
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"] == "audio/wav"
            job_id = response.headers["x-generation-id"]
            assert "/events" in response.headers["link"]
            for piece in response.iter_bytes():
                pieces.append(piece)
        header, pcm = parse_wav_stream(b"".join(pieces))
        assert header == {
            "tag": 1,
            "channels": 1,
            "rate": 32000,
            "byte_rate": 64000,
            "align": 2,
            "bits": 16,
        }
        assert pcm.shape == (int(0.6 * 32000),)
        job = wait_for(client, job_id)
        assert job["status"] == "succeeded"
        stored, _ = sf.read(io.BytesIO(client.get(job["links"]["audio"]).content), dtype="float32")
        np.testing.assert_allclose(pcm, stored, atol=3 / 32768)

        # A finished job's stream link replays the stored file as the same kind of stream,
        # sample for sample (the stream's PCM is libsndfile's, as the file's is).
        replay = client.get(job["links"]["stream"])
        _, replayed = parse_wav_stream(replay.content)
        np.testing.assert_array_equal(replayed, stored)

        events = client.get(job["links"]["events"]).text
        assert '"status": "succeeded"' in events and events.startswith("event: ")


def test_stream_link_of_a_job_another_replica_runs(tmp_path, tiny_model_dir, tiny_loaded):
    """Replica A is asked for the stream of a queued job; replica B (same database and audio
    store) runs it. A's reader gets no live chunks, notices the job ended, sends the file."""
    settings = make_settings(tmp_path, tiny_model_dir)
    replica_a = create_app(settings, served(tiny_loaded))  # never started: it runs no jobs
    svc_a = replica_a.state.service
    job = svc_a.store.create(
        model="tiny", prompt="elsewhere", params={"duration": 0.3}, fmt="wav", stream=False
    )
    received: list[bytes] = []
    reader = threading.Thread(
        target=lambda: received.append(
            TestClient(replica_a).get(f"/v1/generations/{job.id}/stream").content
        )
    )
    reader.start()
    while svc_a.broker.get(job.id) is None:  # A's reader is following its (empty) live stream
        assert reader.is_alive(), "the reader of replica A failed"
        time.sleep(0.01)
    with TestClient(create_app(settings, served(tiny_loaded))) as replica_b:
        assert wait_for(replica_b, job.id)["status"] == "succeeded"
        stored, _ = sf.read(
            io.BytesIO(replica_b.get(f"/v1/generations/{job.id}/audio").content), dtype="float32"
        )
    reader.join(60)
    assert not reader.is_alive()
    _, pcm = parse_wav_stream(received[0])
    np.testing.assert_array_equal(pcm, stored)


def test_streamed_pcm_equals_the_16_bit_file_sample_for_sample():
    """The same float audio, streamed and written as a WAV file, gives the same 16-bit samples
    (full scale, half scale, beyond full scale, the smallest steps, noise)."""
    rng = np.random.default_rng(3)
    audio = np.clip(rng.normal(0, 0.4, (2, 4000)), -1.2, 1.2).astype(np.float32)
    audio[:, :7] = [1.0, -1.0, 0.5, -0.5, 1.5, 1 / 65536, 3 / 65536]
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(audio, -1, 1).T, 32000, format="WAV", subtype="PCM_16")
    stored, _ = sf.read(io.BytesIO(buffer.getvalue()), dtype="int16")
    streamed = np.frombuffer(to_pcm16(audio), dtype="<i2").reshape(-1, 2)
    np.testing.assert_array_equal(streamed, stored)
    assert streamed[:7, 0].tolist() == [32767, -32768, 16384, -16384, 32767, 0, 1]


def test_frames_handed_in_pieces_stream_as_the_delayed_columns_do(non_causal_engine):
    """``put_frames`` (long form: final frames, no delay pattern) gives the chunks ``put`` gives
    for the same codes fed as ``generate``'s delayed columns; frames must follow on."""
    engine = non_causal_engine
    params = GenerationParams(duration=1.2, seed=4, guidance_scale=1.0)
    options = dict(chunk_frames=10, context_frames=15, lookahead_frames=4, crossfade_frames=2)
    _, by_columns, _ = stream_generate(engine, ["a", "bb"], params, **options)

    loop = engine.new_loop()
    rows = [
        loop.add_row(prompt, engine.sampling(params), seed=params.seed + i)
        for i, prompt in enumerate(["a", "bb"])
    ]
    while loop.rows:
        loop.step()
    codes = torch.stack([row.codes() for row in rows])  # [2, K, 60]
    by_frames: dict[int, list[np.ndarray]] = {0: [], 1: []}
    streamer = CodecStreamer(
        engine.model,
        batch_size=2,
        max_new_tokens=engine._generate_kwargs(params)["max_new_tokens"],
        num_samples=int(round(params.duration * engine.sample_rate)),
        on_audio=lambda i, audio: by_frames[i].append(audio),
        **options,
    )
    start = 0
    for size in (1, 7, 3, 20, 1, 28):  # uneven pieces, 60 frames in all
        streamer.put_frames(start, codes[..., start : start + size])
        start += size
    with pytest.raises(ValueError, match="follow on"):
        streamer.put_frames(10, codes[..., 10:12])
    streamer.end()
    for index in range(2):
        joined = np.concatenate(by_frames[index], axis=-1)
        expected = np.concatenate(by_columns[index], axis=-1)
        assert joined.shape == expected.shape == (1, int(1.2 * 32000))
        np.testing.assert_allclose(joined, expected, atol=1e-6)
