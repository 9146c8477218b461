"""Service jobs longer than the model's window: made window by window (generation/long_form.py)
under both schedulers, equal to ``GenerationEngine.generate``'s long form for the same seed,
streamed chunk by chunk while later windows are still to come, stoppable between steps; limits
from the config, not the positions."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient
from serve_helpers import (  # noqa: F401 - one_torch_thread is a fixture
    make_settings,
    one_torch_thread,
    wait_for,
)

from musicgen_train.generation import GenerationEngine, GenerationParams
from musicgen_train.serve.app import create_app
from musicgen_train.serve.batch import Batch, GenerationAborted, generate_batch
from musicgen_train.serve.models import ModelFacts, ServedModel, makes_long_form
from musicgen_train.serve.settings import ModelSpec, StreamSettings

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RATE = 32_000
PROMPT = "a long calm hum"
WINDOW, STRIDE = 0.5, 0.3  # seconds: a 1.1 s job is three windows (0.5 + 0.3 + 0.3)


def _engine(loaded) -> GenerationEngine:
    return GenerationEngine(loaded, precision="fp32", window_seconds=WINDOW, extend_stride=STRIDE)


@pytest.fixture(params=["continuous", "static"])
def client(request, tmp_path, tiny_model_dir, tiny_loaded):
    settings = make_settings(tmp_path, tiny_model_dir, worker={"scheduler": request.param})
    with TestClient(create_app(settings, {"tiny": _engine(tiny_loaded)})) as client:
        client.scheduler = request.param
        yield client


def _wav(data: bytes) -> np.ndarray:
    return sf.read(io.BytesIO(data), dtype="float32")[0]


def test_a_job_longer_than_the_window_is_the_engine_s_long_form(client, tiny_loaded):
    model = client.get("/v1/models").json()["models"][0]
    assert model["limits"] | {"max_duration": None} == {
        "max_duration": None,
        "max_audio_prompt_seconds": WINDOW,
        "window_seconds": WINDOW,
        "long_form": True,
    }
    body = {"prompt": PROMPT, "duration": 1.1, "seed": 7}
    created = client.post("/v1/generations", json=body)
    assert created.status_code == 202, created.text
    job = wait_for(client, created.json()["id"])
    assert job["status"] == "succeeded", job
    audio = _wav(client.get(f"/v1/generations/{job['id']}/audio").content)
    expected = _engine(tiny_loaded).generate([PROMPT], GenerationParams(duration=1.1, seed=7))[0, 0]
    assert audio.shape == (int(1.1 * RATE),)
    # The file is 16-bit PCM: equal to the engine's audio to its rounding.
    np.testing.assert_allclose(audio, expected, atol=1 / 32767 + 1e-6)
    # Under continuous batching it ran in the decode batch, a row per window.
    generators = client.app.state.service.worker.generators
    steps = sum(getattr(g, "scheduler", None) and g.scheduler.steps or 0 for g in generators)
    assert steps == (0 if client.scheduler == "static" else 25 + 3 + 2 * (15 + 3))

    # Streamed: the WAV header, then the clip decoded chunk by chunk (with context, lookahead
    # and crossfade, as any stream): the same audio as the file to well within 16 bits.
    streamed = client.post("/v1/generations/stream", json=body)
    assert streamed.status_code == 200
    data = streamed.content
    assert data[:4] == b"RIFF" and data[36:40] == b"data"
    pcm = np.frombuffer(data[44:], dtype="<i2").astype(np.float32) / 32768
    assert struct.unpack("<H", data[22:24])[0] == 1  # mono
    assert pcm.shape == expected.shape
    error = np.sqrt(np.mean((pcm - expected) ** 2))
    assert error < 1e-3 * np.sqrt(np.mean(expected**2)) + 1 / 32768, error

    # Past the configured limit (2 s) it is still one 422.
    refused = client.post("/v1/generations", json={**body, "duration": 2.5})
    assert refused.status_code == 422 and "2.5" in refused.text


def test_a_long_job_stops_between_steps_and_reports_progress(tiny_loaded):
    engine = _engine(tiny_loaded)
    batch = Batch("tiny", [PROMPT], {"duration": 1.1, "seed": 1}, ["wav"], [False])
    events, asked = [], [0]

    def stop_after_60() -> str | None:
        asked[0] += 1
        return "canceled" if asked[0] > 60 else None

    with pytest.raises(GenerationAborted, match="canceled"):
        generate_batch(engine, batch, StreamSettings(), events.append, stop_after_60)
    # 60 steps made: the first window (25 frames + 3 of delay) and part of the second
    assert asked[0] == 61
    assert not [e for e in events if e[0] == "audio"]

    events.clear()
    clips = generate_batch(engine, batch, StreamSettings(), events.append, lambda: None)
    assert clips[0].seconds == pytest.approx(1.1) and clips[0].error is None
    progress = [e[1] for e in events if e[0] == "progress"]
    assert progress[-1] == 1.0 and all(0 <= p <= 1 for p in progress)
    assert progress == sorted(progress)


def test_long_form_limits_come_from_the_config_not_the_positions(tiny_loaded):
    assert makes_long_form(_engine(tiny_loaded))
    # A stride that does not fit the window (18 s of 0.5): jobs stay within the positions.
    assert not makes_long_form(GenerationEngine(tiny_loaded, precision="fp32", window_seconds=0.5))
    spec = ModelSpec(name="m", source="tiny", max_duration=120.0)
    text = ServedModel(spec, ModelFacts(32000, 1, 50.0, 4, max_duration=40.9, long_form=True))
    melody = ServedModel(spec, ModelFacts(32000, 1, 50.0, 4, max_duration=40.9, melody=True))
    assert text.max_duration == 120.0 and melody.max_duration == 40.9
    assert text.is_long(30.5) and not text.is_long(30.0) and not melody.is_long(35.0)


def test_a_streamed_long_job_is_heard_before_its_first_window_ends(tiny_loaded):
    """The stream's chunks come as the frames become final, in every window, not once at the
    end; joined, they are the clip the job's file holds."""
    engine = _engine(tiny_loaded)
    batch = Batch(
        "tiny", [PROMPT, "and a drum"], {"duration": 1.1, "seed": 2}, ["wav"] * 2, [True, True]
    )
    steps, heard = [0], {0: [], 1: []}  # steps: on_step calls so far (two rows per step)

    def clock() -> None:
        steps[0] += 1

    def emit(event) -> None:
        if event[0] == "audio":
            heard[event[1]].append((steps[0] // 2, event[2]))

    stream = StreamSettings(chunk_seconds=0.1, first_chunk_seconds=0.1, context_seconds=0.2)
    clips = generate_batch(engine, batch, stream, emit, lambda: clock())
    first_window_steps = 25 + 3  # 0.5 s at 50 frames/s, and the delay pattern's 3
    for index, clip in enumerate(clips):
        stored = _wav(clip.data)
        chunks = heard[index]
        when = [step for step, _ in chunks]
        assert when[0] < first_window_steps, when  # heard while the first window was made
        assert len([w for w in when if w < first_window_steps]) >= 2
        assert len(set(when)) >= 6, when  # in every window, not in one piece at the end
        pcm = np.frombuffer(b"".join(piece for _, piece in chunks), dtype="<i2")
        pcm = pcm.astype(np.float32) / 32768
        assert pcm.shape == stored.shape == (int(1.1 * RATE),)
        error = np.sqrt(np.mean((pcm - stored) ** 2))
        assert error < 1e-3 * np.sqrt(np.mean(stored**2)) + 1 / 32768, error
