"""A stereo model served (tiny-stereo: 8 codebooks, channels interleaved): under both schedulers a
seeded job's file has two channels and equals ``musicgen-train generate``'s audio for the same
inputs, and ``/v1/models`` says two channels (the stream's WAV header is built from it)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import torch
from fastapi.testclient import TestClient
from serve_helpers import (  # noqa: F401 - one_torch_thread is a fixture
    make_settings,
    one_torch_thread,
    wait_for,
)

from musicgen_train.cli import main
from musicgen_train.generation import GenerationEngine, GenerationParams
from musicgen_train.generation.streaming import CodecStreamer
from musicgen_train.serve.app import create_app
from musicgen_train.sources import load_musicgen

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT, RATE = "wide stereo pads", 32_000


@pytest.fixture(scope="module")
def stereo_loaded():
    return load_musicgen("tiny-stereo")


@pytest.mark.parametrize("scheduler", ["continuous", "static"])
def test_seeded_stereo_job_equals_the_cli(scheduler, tmp_path, tiny_model_dir, stereo_loaded):
    models = [{"name": "stereo", "source": "tiny-stereo", "max_duration": 2.0}]
    settings = make_settings(
        tmp_path, tiny_model_dir, models=models, worker={"scheduler": scheduler}
    )
    engines = {"stereo": GenerationEngine(stereo_loaded, precision="fp32")}
    with TestClient(create_app(settings, engines)) as client:
        (described,) = client.get("/v1/models").json()["models"]
        assert (described["name"], described["channels"], described["num_codebooks"]) == (
            "stereo",
            2,
            8,
        )
        body = {"prompt": PROMPT, "duration": 0.3, "seed": 5, "model": "stereo"}
        created = client.post("/v1/generations", json=body)
        assert created.status_code == 202, created.text
        job = wait_for(client, created.json()["id"])
        assert job["status"] == "succeeded", job
        data = client.get(f"/v1/generations/{job['id']}/audio").content
    served, rate = sf.read(io.BytesIO(data), dtype="float32")
    assert rate == RATE and served.shape == (int(0.3 * RATE), 2)
    out = tmp_path / "cli.wav"
    args = ["generate", "model=tiny-stereo", f"prompt={PROMPT}", "duration=0.3", "seed=5"]
    assert main([*args, "generation.precision=fp32", f"output={out}"]) == 0
    cli, _ = sf.read(out, dtype="float32")
    np.testing.assert_array_equal(served, cli)
    # Two channels, not one copied. (The tiny random codec's output hardly depends on the codes:
    # any two code sequences decode within ~5e-5 of each other, so only "not equal" is asked.)
    assert np.abs(served[:, 0] - served[:, 1]).max() > 0


@pytest.mark.parametrize("scheduler", ["continuous", "static"])
def test_a_stereo_job_streams_two_interleaved_channels(
    scheduler, tmp_path, tiny_model_dir, stereo_loaded
):
    models = [{"name": "stereo", "source": "tiny-stereo", "max_duration": 2.0}]
    settings = make_settings(
        tmp_path, tiny_model_dir, models=models, worker={"scheduler": scheduler}
    )
    engines = {"stereo": GenerationEngine(stereo_loaded, precision="fp32")}
    body = {"prompt": PROMPT, "duration": 0.4, "seed": 2, "model": "stereo"}
    with TestClient(create_app(settings, engines)) as client:
        answer = client.post("/v1/generations/stream", json=body)
        assert answer.status_code == 200
        header = answer.content[:44]
        channels = int.from_bytes(header[22:24], "little")
        block_align = int.from_bytes(header[32:34], "little")
        assert (header[:4], channels, block_align) == (b"RIFF", 2, 4)
        pcm = np.frombuffer(answer.content[44:], dtype="<i2").astype(np.float32) / 32767
        job_id = answer.headers["X-Generation-Id"]
        assert wait_for(client, job_id)["status"] == "succeeded"
        data = client.get(f"/v1/generations/{job_id}/audio").content
    stored, _ = sf.read(io.BytesIO(data), dtype="float32")
    assert stored.shape == (int(0.4 * RATE), 2)
    streamed = pcm.reshape(-1, 2)  # interleaved L R L R ...
    assert streamed.shape == stored.shape
    # Decoded chunk by chunk while streaming: within 1e-3 of the file's RMS (16-bit both).
    assert np.abs(streamed - stored).max() < 1e-3 * np.sqrt(np.mean(stored**2))


@pytest.mark.parametrize("feed", ["columns", "frames"])
def test_a_stereo_stream_decodes_the_codes_the_file_holds(feed, stereo_loaded):
    """A stereo model's left and right codebooks alternate and each pair shares one delay
    (``k // 2``): the streamer undoes that pattern, so the frames it decodes are the row's codes
    (the tiny codec decodes any codes to nearly the same audio, so the codes are compared)."""
    engine = GenerationEngine(stereo_loaded, precision="fp32")
    params = GenerationParams(duration=0.4, seed=3)
    sampling = engine.sampling(params)
    loop = engine.new_loop()
    row = loop.add_row(PROMPT, sampling, seed=3)
    streamer = CodecStreamer(
        engine.model, batch_size=1, max_new_tokens=sampling.max_new_tokens, num_samples=12800
    )
    fed = 0
    while loop.rows:
        loop.step()
        if feed == "columns":  # as generate's ids come: the delayed columns, step by step
            for step in range(fed, row.step + 1):
                streamer.put(row.delayed_ids()[:, step])
            fed = row.step + 1
        else:  # as long form hands them: the frames complete so far
            done = row.codes(stereo=True)
            streamer.put_frames(fed, done[None, :, fed:])
            fed = done.shape[-1]
    codes = row.codes(stereo=True)
    # 0.4 s is 20 frames; the steps (20 + K - 1 = 27) count 7 of delay where stereo lags only 3,
    # so 4 frames more are made (the decode trims them)
    assert codes.shape == (8, 20 + 4)
    assert streamer.complete_frames == codes.shape[-1]
    torch.testing.assert_close(streamer.codes(0, codes.shape[-1])[0], codes)
