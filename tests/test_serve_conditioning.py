"""Service jobs with a melody reference and/or an audio prompt (serve/uploads.py): uploads,
inline base64, one 422 per bad field, under both schedulers (a text model's prompted job in the
continuous decode batch, next to plain jobs; a melody model's too, its condition a prefix of its
row), and a seeded
job that equals ``musicgen-train generate``'s audio for the same inputs."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import soundfile as sf
from evaluation_models import tone
from fastapi.testclient import TestClient
from serve_helpers import (  # noqa: F401 - one_torch_thread is a fixture
    make_settings,
    one_torch_thread,
    wait_for,
)

from musicgen_train.audio import encode_audio_bytes, write_audio
from musicgen_train.cli import main
from musicgen_train.generation import GenerationEngine, GenerationParams
from musicgen_train.serve.app import create_app
from musicgen_train.sources import load_musicgen

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RATE, HOP = 32_000, 640
PROMPT = "a calm hum"


@pytest.fixture(scope="module")
def melody_loaded():
    return load_musicgen("tiny-melody")


def _app(tmp_path, tiny_model_dir, tiny_loaded, melody_loaded, tiny_seconds=2.0, **overrides):
    models = [
        {"name": "tiny", "source": str(tiny_model_dir), "max_duration": tiny_seconds},
        {"name": "melody", "source": "tiny-melody", "max_duration": 2.0},
    ]
    settings = make_settings(tmp_path, tiny_model_dir, models=models, **overrides)
    engines = {  # a window of 0.5 s: a longer audio prompt is refused
        "tiny": GenerationEngine(tiny_loaded, precision="fp32", window_seconds=0.5),
        "melody": GenerationEngine(melody_loaded, precision="fp32", window_seconds=0.5),
    }
    return create_app(settings, engines)


@pytest.fixture(params=["continuous", "static"])
def client(request, tmp_path, tiny_model_dir, tiny_loaded, melody_loaded):
    app = _app(
        tmp_path, tiny_model_dir, tiny_loaded, melody_loaded, worker={"scheduler": request.param}
    )
    with TestClient(app) as client:
        yield client


def _wav(audio: np.ndarray) -> bytes:
    return encode_audio_bytes(audio, RATE, "wav")


def _upload(client, data: bytes) -> str:
    answer = client.post("/v1/uploads", content=data, headers={"content-type": "audio/wav"})
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def _audio(client, body: dict) -> np.ndarray:
    created = client.post("/v1/generations", json=body)
    assert created.status_code == 202, created.text
    job = wait_for(client, created.json()["id"])
    assert job["status"] == "succeeded", job
    data = client.get(f"/v1/generations/{job['id']}/audio").content
    return sf.read(io.BytesIO(data), dtype="float32")[0]


def _cli(tmp_path, *args: str) -> np.ndarray:
    out = tmp_path / "cli.wav"
    base = ["generate", f"prompt={PROMPT}", "generation.precision=fp32", f"output={out}"]
    assert main([*base, *args]) == 0
    return sf.read(out, dtype="float32")[0]


def test_seeded_conditioned_jobs_equal_the_cli(client, tmp_path, tiny_model_dir):
    start, ref = tone(0.3, RATE, 220.0), tone(0.5, RATE, 392.0)  # fits a 64 KB body
    write_audio(tmp_path / "start.wav", start, RATE)
    write_audio(tmp_path / "ref.wav", ref, RATE)
    start_bytes = (tmp_path / "start.wav").read_bytes()
    ref_bytes = (tmp_path / "ref.wav").read_bytes()
    upload = client.post("/v1/uploads", content=start_bytes)
    assert upload.status_code == 201
    assert upload.json() | {"id": None} == {
        "id": None,
        "bytes": len(start_bytes),
        "seconds": pytest.approx(0.3),
        "sample_rate": RATE,
        "channels": 1,
    }

    # A text model continues an uploaded prompt: the prompt's 15 frames, then 0.2 s.
    body = {"prompt": PROMPT, "duration": 0.2, "seed": 3}
    job = _audio(
        client, {**body, "model": "tiny", "audio_prompt": {"upload_id": upload.json()["id"]}}
    )
    assert job.shape == (15 * HOP + int(0.2 * RATE),)
    cli = _cli(
        tmp_path,
        f"model={tiny_model_dir}",
        "duration=0.2",
        "seed=3",
        f"audio_prompt={tmp_path / 'start.wav'}",
    )
    np.testing.assert_array_equal(job, cli)
    # Under continuous batching it ran in the decode batch: its first step wrote the prompt's
    # frames, then one step per sampled token; the static scheduler ran a batch of one.
    service = client.app.state.service
    generators = service.worker.generators
    sampled = service.engines["tiny"].sampling(GenerationParams(duration=0.2)).max_new_tokens
    continuous = service.settings.worker.scheduler == "continuous"
    assert sum(g.scheduler.steps for g in generators) == (sampled if continuous else 0)

    # A melody model with an inline melody and an uploaded prompt.
    both = {
        **body,
        "model": "melody",
        "melody": {"base64": base64.b64encode(ref_bytes).decode()},
        "audio_prompt": {"upload_id": _upload(client, start_bytes)},
    }
    job = _audio(client, both)
    cli = _cli(
        tmp_path,
        "model=tiny-melody",
        "duration=0.2",
        "seed=3",
        f"melody={tmp_path / 'ref.wav'}",
        f"audio_prompt={tmp_path / 'start.wav'}",
    )
    assert job.shape == (15 * HOP + int(0.2 * RATE),)
    np.testing.assert_array_equal(job, cli)
    # Under continuous batching the melody model's job ran in its decode batch too (the melody
    # and text prefix and the prompt's frames prefilled at its first step).
    melody_sampled = service.engines["melody"].sampling(GenerationParams(duration=0.2))
    assert melody_sampled.max_new_tokens == sampled
    assert sum(g.scheduler.steps for g in generators) == (2 * sampled if continuous else 0)

    # A melody model's plain job (no reference: the null chroma) runs too, next to a text job.
    plain = client.post("/v1/generations", json={**body, "model": "melody", "seed": 4})
    text = client.post("/v1/generations", json={**body, "model": "tiny"})
    for created in (plain, text):
        assert wait_for(client, created.json()["id"])["status"] == "succeeded"


@pytest.fixture
def idle(tmp_path, tiny_model_dir, tiny_loaded, melody_loaded):
    """Only validation runs: the app's lifespan starts, but every request here is refused."""
    app = _app(
        tmp_path,
        tiny_model_dir,
        tiny_loaded,
        melody_loaded,
        limits={"max_upload_bytes": 200_000, "max_melody_seconds": 1.0},
    )
    with TestClient(app) as client:
        yield client


def _one_error(answer, loc: list, words: str) -> None:
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert len(detail) == 1 and detail[0]["loc"] == loc and words in detail[0]["msg"], detail


def test_bad_audio_is_one_422_naming_the_field(idle):
    wav = _wav(tone(0.2, RATE))
    body = {"prompt": PROMPT, "duration": 0.2, "model": "tiny"}
    inline = {"base64": base64.b64encode(wav).decode()}
    _one_error(
        idle.post("/v1/generations", json={**body, "melody": inline}),
        ["body", "melody"],
        "conditioned on text only",
    )
    _one_error(
        idle.post("/v1/generations", json={**body, "audio_prompt": {"base64": "not base64!"}}),
        ["body", "audio_prompt", "base64"],
        "not valid base64",
    )
    garbage = {"base64": base64.b64encode(b"RIFF1234 this is no audio").decode()}
    _one_error(
        idle.post("/v1/generations", json={**body, "audio_prompt": garbage}),
        ["body", "audio_prompt", "base64"],
        "cannot be read as audio",
    )
    empty = {"base64": base64.b64encode(_wav(np.zeros((1, 0), np.float32))).decode()}
    _one_error(
        idle.post("/v1/generations", json={**body, "audio_prompt": empty}),
        ["body", "audio_prompt", "base64"],
        "no audio",
    )
    missing = {"upload_id": "00000000-0000-4000-8000-000000000000"}
    _one_error(
        idle.post("/v1/generations", json={**body, "audio_prompt": missing}),
        ["body", "audio_prompt", "upload_id"],
        "no upload",
    )
    both = {**inline, **missing}
    answer = idle.post("/v1/generations", json={**body, "audio_prompt": both})
    assert answer.status_code == 422 and "exactly one" in answer.text

    long_prompt = _upload(idle, _wav(tone(0.6, RATE)))  # the window is 0.5 s
    _one_error(
        idle.post("/v1/generations", json={**body, "audio_prompt": {"upload_id": long_prompt}}),
        ["body", "audio_prompt", "upload_id"],
        "shorter than model 'tiny'",
    )
    # Longer than any use (the melody limit, every model's max_duration): refused at upload.
    _one_error(
        idle.post("/v1/uploads", content=encode_audio_bytes(tone(3.0, 8_000), 8_000, "wav")),
        ["body"],
        "is longer than 2 s, the longest audio this service uses",
    )
    long_melody = _upload(idle, encode_audio_bytes(tone(1.5, 8_000), 8_000, "wav"))
    melody_body = {**body, "model": "melody", "melody": {"upload_id": long_melody}}
    _one_error(
        idle.post("/v1/generations", json=melody_body),
        ["body", "melody", "upload_id"],
        "max_melody_seconds",
    )

    _one_error(idle.post("/v1/uploads", content=b""), ["body"], "empty")
    _one_error(idle.post("/v1/uploads", content=b"OggS not really"), ["body"], "cannot be read")
    # what a phone records: an M4A (AAC) file, named as such, with what to send instead
    m4a = b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00M4A mp42isom" + bytes(64)
    _one_error(
        idle.post("/v1/uploads", content=m4a),
        ["body"],
        "is an MP4/M4A file (AAC or ALAC), which cannot be read here: send wav, flac, ogg or mp3",
    )
    big = idle.post("/v1/uploads", content=_wav(tone(4.0, RATE)))  # 256 KB > 200 KB
    assert big.status_code == 413 and "max_upload_bytes" in big.json()["detail"]
    assert idle.app.state.service.store.count("queued") == 0  # nothing was queued above

    models = {m["name"]: m for m in idle.get("/v1/models").json()["models"]}
    assert models["melody"]["melody"] is True and models["tiny"]["melody"] is False
    assert models["tiny"]["limits"]["max_audio_prompt_seconds"] == 0.5


def test_uploads_go_with_the_retention_sweep(tmp_path):
    import os
    import time

    from musicgen_train.serve.storage import AudioStore

    store = AudioStore(tmp_path / "audio")
    old, new = "00000000-0000-4000-8000-000000000001", "00000000-0000-4000-8000-000000000002"
    store.put_upload(old, b"old")
    store.put_upload(new, b"new")
    hour_ago = time.time() - 3600
    os.utime(tmp_path / "audio" / "uploads" / old, (hour_ago, hour_ago))
    assert store.delete_uploads(older_than=time.time() - 60) == 1
    assert store.get_upload(old) is None and store.get_upload(new) == b"new"
    with pytest.raises(ValueError, match="not an upload id"):
        store.get_upload("../jobs.db")


def test_a_conditioned_job_streams(tmp_path, tiny_model_dir, tiny_loaded, melody_loaded):
    app = _app(tmp_path, tiny_model_dir, tiny_loaded, melody_loaded)
    start = {"base64": base64.b64encode(_wav(tone(0.3, RATE, 220.0))).decode()}
    body = {"prompt": PROMPT, "duration": 0.4, "seed": 2, "audio_prompt": start}
    with TestClient(app) as client:
        for model in ("tiny", "melody"):
            answer = client.post("/v1/generations/stream", json={**body, "model": model})
            assert answer.status_code == 200
            job_id = answer.headers["X-Generation-Id"]
            pcm = np.frombuffer(answer.content[44:], dtype="<i2").astype(np.float32) / 32767
            assert wait_for(client, job_id)["status"] == "succeeded"
            stored = sf.read(
                io.BytesIO(client.get(f"/v1/generations/{job_id}/audio").content),
                dtype="float32",
            )[0]
            assert pcm.shape == stored.shape == (15 * HOP + int(0.4 * RATE),)
            # The prompt's frames, then the continuation, streamed as decoded: within 1e-3 of
            # the RMS of the stored file (measured 1.4e-4 to 2.7e-4; 16-bit both).
            rms = np.sqrt(np.mean(stored**2))
            assert np.abs(pcm - stored).max() < 1e-3 * rms


def test_a_prompted_job_shares_the_decode_batch_with_plain_jobs(
    tmp_path, tiny_model_dir, tiny_loaded, melody_loaded
):
    """Continuous batching: a text model's prompted job joins a running batch next to plain
    jobs (their steps and running times overlap), and each seeded job is its CLI audio."""
    write_audio(tmp_path / "start.wav", tone(0.3, RATE, 220.0), RATE)
    app = _app(tmp_path, tiny_model_dir, tiny_loaded, melody_loaded, tiny_seconds=8.0)
    with TestClient(app) as client:
        assert app.state.service.settings.worker.scheduler == "continuous"
        upload = _upload(client, (tmp_path / "start.wav").read_bytes())
        # A long job that is still running when the others join and leave.
        long_body = {"prompt": "long pads", "duration": 8.0, "model": "tiny"}
        long = client.post("/v1/generations", json=long_body).json()["id"]
        wait_for(client, long, states=("running",))
        prompted_body = {"prompt": PROMPT, "duration": 0.2, "seed": 3, "model": "tiny"}
        prompted = client.post(
            "/v1/generations", json={**prompted_body, "audio_prompt": {"upload_id": upload}}
        ).json()["id"]
        plain_body = {"prompt": PROMPT, "duration": 0.3, "seed": 4, "model": "tiny"}
        plain = client.post("/v1/generations", json=plain_body).json()["id"]
        jobs = {job_id: wait_for(client, job_id) for job_id in (long, prompted, plain)}
        assert all(job["status"] == "succeeded" for job in jobs.values()), jobs
        audio = {}
        for job_id in (prompted, plain):
            data = client.get(f"/v1/generations/{job_id}/audio").content
            audio[job_id] = sf.read(io.BytesIO(data), dtype="float32")[0]
        scheduler = app.state.service.worker.generators[0].scheduler
        # Steps with more than one row: the rows shared them.
        assert scheduler.rows_stepped > scheduler.steps
    timings = {job_id: job["timings"] for job_id, job in jobs.items()}
    for other in (long, plain):  # the prompted job ran while each of the others ran
        assert timings[prompted]["started_at"] < timings[other]["finished_at"]
        assert timings[other]["started_at"] < timings[prompted]["finished_at"]
    assert audio[prompted].shape == (15 * HOP + int(0.2 * RATE),)
    cli = _cli(
        tmp_path,
        f"model={tiny_model_dir}",
        "duration=0.2",
        "seed=3",
        f"audio_prompt={tmp_path / 'start.wav'}",
    )
    np.testing.assert_array_equal(audio[prompted], cli)
    cli = _cli(tmp_path, f"model={tiny_model_dir}", "duration=0.3", "seed=4")
    assert audio[plain].shape == (int(0.3 * RATE),)
    np.testing.assert_array_equal(audio[plain], cli)


def test_a_queued_prompted_job_whose_upload_went_fails_alone(
    tmp_path, tiny_model_dir, tiny_loaded, melody_loaded
):
    """Continuous batching reads the upload when the job joins: gone by then (the retention
    sweep), the job fails with the reason, and the batch goes on."""
    import time

    app = _app(
        tmp_path,
        tiny_model_dir,
        tiny_loaded,
        melody_loaded,
        tiny_seconds=8.0,
        worker={"max_batch_size": 1},  # the prompted job waits while the long one runs
    )
    with TestClient(app) as client:
        upload = _upload(client, _wav(tone(0.3, RATE)))
        long = client.post("/v1/generations", json={"prompt": "pads", "duration": 8.0}).json()
        wait_for(client, long["id"], states=("running",))
        body = {"prompt": PROMPT, "duration": 0.2, "audio_prompt": {"upload_id": upload}}
        prompted = client.post("/v1/generations", json=body)
        assert prompted.status_code == 202
        assert app.state.service.audio.delete_uploads(older_than=time.time() + 60) == 1
        failed = wait_for(client, prompted.json()["id"])
        assert failed["status"] == "failed"
        assert failed["error"] == f"the audio_prompt upload {upload} is gone"
        assert wait_for(client, long["id"])["status"] == "succeeded"
