"""Deleting a finished generation and an upload before retention does, by the key that made it
(``DELETE /v1/generations/{id}``, ``DELETE /v1/uploads/{id}``)."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from serve_helpers import make_settings, one_torch_thread, served, wait_for  # noqa: F401
from test_serve_contract import KEYS, identity, keyed  # noqa: F401 - fixtures

from musicgen_train.audio import encode_audio_bytes
from musicgen_train.serve.app import create_app

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_finished_generation_goes_with_its_audio_and_only_for_its_key(keyed, tmp_path):  # noqa: F811
    client, svc = keyed()
    with client:  # the worker runs
        client.headers.update(KEYS["alice"])
        job_id = client.post("/v1/generations", json={"prompt": "a", "duration": 0.2}).json()["id"]
        assert wait_for(client, job_id)["status"] == "succeeded"
        audio = tmp_path / "audio" / f"{job_id}.wav"
        assert audio.exists()
        stolen = client.delete(f"/v1/generations/{job_id}", headers=KEYS["bob"])
        assert (
            stolen.status_code == 404
            and stolen.json()["detail"] == f"no generation with id {job_id}"
        )
        assert audio.exists() and client.get(f"/v1/generations/{job_id}").status_code == 200
        deleted = client.delete(f"/v1/generations/{job_id.upper()}")  # any spelling of the id
        assert deleted.status_code == 204 and deleted.content == b""
        assert not audio.exists() and svc.store.get(job_id) is None
        for path in ("", "/audio", "/stream", "/events"):
            assert client.get(f"/v1/generations/{job_id}{path}").status_code == 404, path
        assert client.get("/v1/generations").json()["data"] == []
        again = client.delete(f"/v1/generations/{job_id}")
        assert again.status_code == 404 and client.delete("/v1/generations/nope").status_code == 404


def test_a_queued_or_running_generation_must_be_canceled_first(keyed):  # noqa: F811
    client, svc = keyed()  # no worker: the job stays queued
    client.headers.update(KEYS["alice"])
    params, owner = {"duration": 0.2}, identity("alice-key")
    job_id = svc.store.create(
        model="tiny", prompt="a", params=params, fmt="wav", stream=False, owner=owner
    ).id
    refused = client.delete(f"/v1/generations/{job_id}")
    assert refused.status_code == 409
    assert refused.json()["detail"] == (
        f"generation {job_id} is queued: cancel it first "
        f"(POST /v1/generations/{job_id}/cancel), then delete it"
    )
    assert svc.store.get(job_id).status == "queued"
    assert client.post(f"/v1/generations/{job_id}/cancel").status_code == 200
    assert client.delete(f"/v1/generations/{job_id}").status_code == 204
    assert svc.store.get(job_id) is None


def test_an_upload_goes_only_for_its_key_and_cannot_be_used_after(keyed, tmp_path):  # noqa: F811
    client, _ = keyed()
    wav = encode_audio_bytes(np.sin(np.linspace(0, 60, 3200))[None] * 0.3, 32000, "wav")
    upload_id = client.post("/v1/uploads", content=wav, headers=KEYS["alice"]).json()["id"]
    stored = tmp_path / "audio" / "uploads" / identity("alice-key").replace(":", "-") / upload_id
    assert stored.read_bytes() == wav
    stolen = client.delete(f"/v1/uploads/{upload_id}", headers=KEYS["bob"])
    assert stolen.status_code == 404 and stolen.json()["detail"] == f"no upload with id {upload_id}"
    assert stored.exists()
    assert client.delete(f"/v1/uploads/{upload_id}", headers=KEYS["alice"]).status_code == 204
    assert not stored.exists()
    body = {"prompt": "a", "duration": 0.2, "audio_prompt": {"upload_id": upload_id}}
    with client:  # ready: the job is checked
        used = client.post("/v1/generations", json=body, headers=KEYS["alice"])
    assert used.status_code == 422
    assert used.json()["detail"][0]["msg"] == f"no upload {upload_id} (POST /v1/uploads first)"
    for gone in (upload_id, "../jobs.db", "not-a-uuid"):
        answer = client.delete(f"/v1/uploads/{gone}", headers=KEYS["alice"])
        assert answer.status_code == 404, gone
    assert client.delete(f"/v1/uploads/{upload_id}").status_code == 401  # no key at all


def test_a_browser_app_on_another_origin_may_delete(tmp_path, tiny_model_dir, tiny_loaded):
    """CORS allowed only GET and POST: a web front-end's preflight for DELETE was refused."""
    origin = "https://app.example.com"
    settings = make_settings(tmp_path, tiny_model_dir, cors={"allow_origins": [origin]})
    client = TestClient(create_app(settings, served(tiny_loaded)))
    preflight = client.options(
        "/v1/uploads/00000000-0000-4000-8000-000000000000",
        headers={"Origin": origin, "Access-Control-Request-Method": "DELETE"},
    )
    assert preflight.status_code == 200
    assert "DELETE" in preflight.headers["access-control-allow-methods"]
