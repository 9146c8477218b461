"""The job API against the app in process: happy path, bad input, cancel, full queue, metrics."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient
from serve_helpers import (
    make_settings,
    served,
    wait_for,
)

from musicgen_train.generation import GenerationEngine, GenerationParams
from musicgen_train.serve.app import create_app

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_generation_happy_path_wav_and_flac(client, tiny_loaded):
    created = client.post(
        "/v1/generations", json={"prompt": "calm jazz piano", "duration": 0.3, "seed": 7}
    )
    assert created.status_code == 202
    body = created.json()
    assert body["status"] in ("queued", "running")
    assert created.headers["location"] == f"/v1/generations/{body['id']}"
    assert body["links"]["audio"] == f"/v1/generations/{body['id']}/audio"
    job = wait_for(client, body["id"])
    assert job["status"] == "succeeded", job
    assert job["progress"] == 1.0 and job["attempts"] == 1
    assert job["params"]["seed"] == 7 and job["params"]["duration"] == 0.3
    assert job["timings"]["generation_seconds"] > 0
    audio = client.get(job["links"]["audio"])
    assert audio.status_code == 200
    assert audio.headers["content-type"] == "audio/wav"
    samples, rate = sf.read(io.BytesIO(audio.content), dtype="float32")
    assert rate == 32000 and samples.shape == (int(0.3 * 32000),)
    # The service uses the shared engine: the same seed gives the same audio (16-bit rounding).
    expected = GenerationEngine(tiny_loaded).generate(
        ["calm jazz piano"], GenerationParams(duration=0.3, seed=7)
    )[0, 0]
    np.testing.assert_allclose(samples, expected, atol=1.5 / 32767)

    flac = client.post("/v1/generations", json={"prompt": "x", "duration": 0.2, "format": "flac"})
    job = wait_for(client, flac.json()["id"])
    audio = client.get(job["links"]["audio"])
    assert audio.headers["content-type"] == "audio/flac"
    assert audio.content[:4] == b"fLaC"
    assert sf.info(io.BytesIO(audio.content)).frames == int(0.2 * 32000)


def test_concurrent_compatible_jobs_share_one_generate_call(tmp_path, tiny_model_dir, tiny_loaded):
    # serve.worker.scheduler=static (the old behaviour); continuous: tests/test_serve_continuous.py
    settings = make_settings(tmp_path, tiny_model_dir, worker={"scheduler": "static"})
    with TestClient(create_app(settings, served(tiny_loaded))) as client:
        _share_one_call(client)


def _share_one_call(client) -> None:
    ids = [
        client.post("/v1/generations", json={"prompt": f"p{i}", "duration": 0.2}).json()["id"]
        for i in range(3)
    ]
    jobs = [wait_for(client, job_id) for job_id in ids]
    assert all(job["status"] == "succeeded" for job in jobs)
    metrics = client.get("/metrics").text
    batches = float(re.search(r"^musicgen_batch_size_count (\S+)", metrics, re.M).group(1))
    assert batches < 3  # at least two of the three ran in one call


INVALID = [
    ({}, "prompt", "Field required"),
    ({"prompt": ""}, "prompt", "at least 1 character"),
    ({"prompt": "   "}, "prompt", "only whitespace"),
    ({"prompt": "x" * 501}, "prompt", "at most 500 characters"),
    ({"prompt": "a", "duration": 0}, "duration", "greater than 0"),
    ({"prompt": "a", "duration": "long"}, "duration", "valid number"),
    ({"prompt": "a", "duration": 2.5}, "duration", "longer than model 'tiny' allows (2 s)"),
    ({"prompt": "a", "guidance_scale": 0.5}, "guidance_scale", "greater than or equal to 1"),
    ({"prompt": "a", "temperature": 0}, "temperature", "greater than 0"),
    ({"prompt": "a", "top_k": -1}, "top_k", "greater than or equal to 0"),
    ({"prompt": "a", "top_p": 1.5}, "top_p", "less than or equal to 1"),
    ({"prompt": "a", "seed": -3}, "seed", "greater than or equal to 0"),
    ({"prompt": "a", "format": "mp3"}, "format", "'wav' or 'flac'"),
    ({"prompt": "a", "model": "other"}, "model", "unknown model 'other'"),
    ({"prompt": "a", "voice": "x"}, "voice", "Extra inputs are not permitted"),
    ({"prompt": 5}, "prompt", "valid string"),
]


@pytest.mark.parametrize(("payload", "field", "message"), INVALID)
def test_invalid_input_is_a_clear_422(idle_app, payload, field, message):
    client, _ = idle_app
    response = client.post("/v1/generations", json=payload)
    assert response.status_code == 422
    errors = response.json()["detail"]
    assert any(e["loc"][-1] == field and message in e["msg"] for e in errors), errors


def test_malformed_json_and_bad_ids(idle_app):
    client, _ = idle_app
    bad = client.post(
        "/v1/generations", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert bad.status_code == 422
    # An id that is no UUID is an unknown job: 404, like a well-formed id nobody created.
    assert client.get("/v1/generations/not-a-uuid").status_code == 404
    assert client.get("/v1/generations/..%2F..%2Fetc%2Fpasswd/audio").status_code == 404
    missing = client.get("/v1/generations/00000000-0000-4000-8000-000000000000")
    assert missing.status_code == 404 and "no generation" in missing.json()["detail"]


def test_audio_before_ready_is_409_and_cancel(idle_app):
    client, svc = idle_app
    job = svc.store.create(
        model="tiny", prompt="a", params={"duration": 0.2}, fmt="wav", stream=False
    )
    not_ready = client.get(f"/v1/generations/{job.id}/audio")
    assert not_ready.status_code == 409 and "queued" in not_ready.json()["detail"]
    canceled = client.post(f"/v1/generations/{job.id}/cancel")
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    again = client.post(f"/v1/generations/{job.id}/cancel")
    assert again.status_code == 409 and "already finished: canceled" in again.json()["detail"]
    assert client.get(f"/v1/generations/{job.id}/audio").status_code == 409


def test_cancel_a_running_job_stops_its_generation(client):
    # Long enough (2 s of audio) that it is still running when the cancel arrives.
    job_id = client.post("/v1/generations", json={"prompt": "a", "duration": 2.0}).json()["id"]
    wait_for(client, job_id, states=("running", "succeeded"))
    assert client.post(f"/v1/generations/{job_id}/cancel").status_code in (200, 409)
    job = wait_for(client, job_id)
    if job["status"] == "canceled":  # the normal case; a very fast machine may finish first
        assert client.get(f"/v1/generations/{job_id}/audio").status_code == 409
    # The worker goes on with the next job.
    next_id = client.post("/v1/generations", json={"prompt": "b", "duration": 0.2}).json()["id"]
    assert wait_for(client, next_id)["status"] == "succeeded"


def test_full_queue_is_503_with_retry_after(tmp_path, tiny_model_dir, tiny_loaded):
    settings = make_settings(tmp_path, tiny_model_dir, queue={"max_size": 2, "retry_after": 7})
    app = create_app(settings, served(tiny_loaded))
    client, svc = TestClient(app), app.state.service  # no lifespan: nothing drains the queue
    for _ in range(2):
        svc.store.create(
            model="tiny", prompt="a", params={"duration": 0.2}, fmt="wav", stream=False
        )
    full = client.post("/v1/generations", json={"prompt": "a", "duration": 0.2})
    assert full.status_code == 503
    assert full.headers["retry-after"] == "7"
    assert "queue is full (2 jobs waiting)" in full.json()["detail"]


def test_models_health_and_openapi(client):
    models = client.get("/v1/models").json()
    assert models["default"] == "tiny"
    (model,) = models["models"]
    limits = {
        "max_duration": 2.0,
        "max_audio_prompt_seconds": 30.0,
        "window_seconds": 30.0,
        "long_form": True,
    }
    assert model["sample_rate"] == 32000 and model["limits"] == limits and not model["melody"]
    assert model["num_codebooks"] == 4 and "registry" in model and "metrics" in model
    assert client.get("/health").json() == {"status": "ok", "detail": {}}
    ready = client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["detail"]["worker_alive"] is True
    spec = client.get("/openapi.json").json()
    for path in (
        "/v1/generations",
        "/v1/generations/{job_id}",
        "/v1/generations/{job_id}/audio",
        "/v1/generations/{job_id}/cancel",
        "/v1/generations/stream",
        "/v1/models",
        "/health",
        "/health/ready",
    ):
        assert path in spec["paths"], path
    prompt = spec["components"]["schemas"]["GenerationRequest"]["properties"]["prompt"]
    assert prompt["maxLength"] == 500 and prompt["minLength"] == 1
    assert client.get("/docs").status_code == 200


def test_not_ready_until_worker_runs(idle_app):
    client, _ = idle_app
    ready = client.get("/health/ready")
    assert ready.status_code == 503 and ready.json()["detail"]["worker_alive"] is False
    refused = client.post("/v1/generations", json={"prompt": "a", "duration": 0.2})
    assert refused.status_code == 503 and "not ready" in refused.json()["detail"]


def _metric(text: str, name: str, **labels) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        metric, value = line.rsplit(" ", 1)
        key = metric.split("{")[0]
        found = ",".join(sorted(re.findall(r'\w+="[^"]*"', metric)))
        if key == name and found == wanted:
            return float(value)
    raise AssertionError(f"{name}{{{wanted}}} not in metrics")


def test_metrics_count_requests_audio_and_generations(client):
    job_id = client.post("/v1/generations", json={"prompt": "a", "duration": 0.25}).json()["id"]
    wait_for(client, job_id)
    client.post("/v1/generations", json={"prompt": ""})
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    post = {"method": "POST", "route": "/v1/generations"}
    assert _metric(text, "musicgen_http_requests_total", **post, status="202") == 1
    assert _metric(text, "musicgen_http_requests_total", **post, status="422") == 1
    assert _metric(text, "musicgen_audio_generated_seconds_total", model="tiny") == 0.25
    assert _metric(text, "musicgen_generation_duration_seconds_count", model="tiny") == 1
    assert _metric(text, "musicgen_jobs_finished_total", model="tiny", status="succeeded") == 1
    assert _metric(text, "musicgen_active_generations") == 0
    assert _metric(text, "musicgen_queue_depth") == 0
    # Raw paths (with ids) never become labels: only route templates do.
    assert job_id not in text and 'route="/v1/generations/{job_id}"' in text


@pytest.mark.parametrize("scheduler", ["continuous", "static"])
def test_a_job_past_its_timeout_fails_with_the_reason(
    tmp_path, tiny_model_dir, tiny_loaded, scheduler
):
    # 2 s of audio is ~100 decoding steps; the deadline (0.01 s + 0.005 s per second of audio)
    # passes long before the last one.
    jobs = {"timeout": 0.01, "timeout_per_audio_second": 0.005}
    settings = make_settings(tmp_path, tiny_model_dir, jobs=jobs, worker={"scheduler": scheduler})
    with TestClient(create_app(settings, served(tiny_loaded))) as client:
        job_id = client.post("/v1/generations", json={"prompt": "a", "duration": 2.0}).json()["id"]
        job = wait_for(client, job_id)
        assert job["status"] == "failed"
        assert job["error"] == (
            "timed out after 0.02 s (serve.jobs.timeout + "
            "serve.jobs.timeout_per_audio_second x duration)"
        )
        assert client.get(f"/v1/generations/{job_id}/audio").status_code == 409


def test_a_job_timeout_grows_with_its_duration():
    from musicgen_train.serve.settings import JobSettings

    jobs = JobSettings(timeout=100, timeout_per_audio_second=30)
    assert jobs.timeout_for(1.0) == 130.0 and jobs.timeout_for(30.0) == 1000.0
