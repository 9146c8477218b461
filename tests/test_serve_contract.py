"""The HTTP contract a client codes against: Allow on 405, 404 for any unknown id, uploads owned
by their key, X-RateLimit-* headers, the paged job list, and readiness while models load."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from serve_helpers import (
    make_settings,
    served,
    wait_for,
)

from musicgen_train.audio import encode_audio_bytes
from musicgen_train.serve.app import create_app
from musicgen_train.serve.storage import AudioStore

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KEYS = {"alice": {"X-API-Key": "alice-key"}, "bob": {"X-API-Key": "bob-key"}}


def identity(key: str) -> str:
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]


@pytest.fixture
def keyed(tmp_path, tiny_model_dir, tiny_loaded, monkeypatch):
    """``keyed(**rate_limit)``: an app (no worker) with two keys, and its service."""
    monkeypatch.setenv("TEST_SERVE_KEYS", "alice-key,bob-key")

    def build(**rate_limit):
        auth = {"api_keys_env": "TEST_SERVE_KEYS"}
        settings = make_settings(tmp_path, tiny_model_dir, auth=auth, rate_limit=rate_limit)
        app = create_app(settings, served(tiny_loaded))
        return TestClient(app), app.state.service

    return build


def test_a_405_names_every_method_of_the_path_head_included(idle_app):
    client, _ = idle_app
    job = "/v1/generations/00000000-0000-4000-8000-000000000000"
    for method, path, allow in [
        ("DELETE", "/health", "GET, HEAD"),
        ("PUT", "/v1/generations", "GET, HEAD, POST"),  # two routes: both named
        ("DELETE", f"{job}/audio", "GET, HEAD"),
        ("GET", f"{job}/cancel", "POST"),
    ]:
        answer = client.request(method, path)
        assert answer.status_code == 405, (method, path)
        assert answer.headers["allow"] == allow, (method, path)
        assert answer.json()["detail"] == f"{method} is not allowed here: use {allow}"
    assert client.head("/health").status_code == 200  # what Allow promises works


def test_an_id_that_is_no_uuid_is_an_unknown_job_on_every_route(idle_app):
    client, svc = idle_app
    for bad in ("not-a-uuid", "12345", "00000000-0000-4000-8000-00000000000g"):
        for method, path in [
            ("GET", "/v1/generations/{}"),
            ("GET", "/v1/generations/{}/audio"),
            ("GET", "/v1/generations/{}/stream"),
            ("GET", "/v1/generations/{}/events"),
            ("POST", "/v1/generations/{}/cancel"),
        ]:
            answer = client.request(method, path.format(bad))
            assert answer.status_code == 404, (method, path, bad)
            assert answer.json()["detail"] == f"no generation with id {bad}"
    # Any spelling of a UUID names the job it spells (upper case, no hyphens).
    job = svc.store.create(model="tiny", prompt="a", params={"duration": 0.2}, fmt="wav", stream=0)
    for spelled in (job.id.upper(), job.id.replace("-", "")):
        assert client.get(f"/v1/generations/{spelled}").json()["id"] == job.id


def test_an_upload_belongs_to_the_key_that_uploaded_it(
    tmp_path, tiny_model_dir, tiny_loaded, keyed
):
    keyed()  # the keys
    settings = make_settings(tmp_path, tiny_model_dir, auth={"api_keys_env": "TEST_SERVE_KEYS"})
    wav = encode_audio_bytes(np.sin(np.linspace(0, 60, 3200))[None] * 0.3, 32000, "wav")
    with TestClient(create_app(settings, served(tiny_loaded))) as client:
        upload = client.post("/v1/uploads", content=wav, headers=KEYS["alice"])
        assert upload.status_code == 201
        upload_id = upload.json()["id"]
        body = {"prompt": "a", "duration": 0.2, "audio_prompt": {"upload_id": upload_id}}
        # To another key the id names nothing: the same answer as an id never uploaded.
        stolen = client.post("/v1/generations", json=body, headers=KEYS["bob"])
        assert stolen.status_code == 422
        assert (
            stolen.json()["detail"][0]["msg"] == f"no upload {upload_id} (POST /v1/uploads first)"
        )
        own = client.post("/v1/generations", json=body, headers=KEYS["alice"])
        assert own.status_code == 202
        client.headers.update(KEYS["alice"])
        assert wait_for(client, own.json()["id"])["status"] == "succeeded"
    folder = tmp_path / "audio" / "uploads" / identity("alice-key").replace(":", "-")
    assert (folder / upload_id).read_bytes() == wav
    # Retention finds uploads in their key's folder too.
    assert AudioStore(tmp_path / "audio").delete_uploads(time.time() + 60) == 1
    assert not (folder / upload_id).exists()


def test_rate_limit_headers_tell_a_client_its_budget_before_a_429(keyed):
    client, _ = keyed(requests="3/minute", generations="5/minute")
    unknown = "/v1/generations/00000000-0000-4000-8000-000000000000"
    remaining = []
    for path in ("/v1/models", unknown, f"{unknown}/audio"):  # a dict, a 404, a Response route
        answer = client.get(path, headers=KEYS["alice"])
        assert answer.headers["x-ratelimit-limit"] == "3", path
        assert 0 < int(answer.headers["x-ratelimit-reset"]) <= 60
        remaining.append(answer.headers["x-ratelimit-remaining"])
    assert remaining == ["2", "1", "0"]
    refused = client.get("/v1/models", headers=KEYS["alice"])
    assert refused.status_code == 429
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert refused.headers["retry-after"] == refused.headers["x-ratelimit-reset"]
    # Generations have their own budget (5 a minute); bob's budget is his own.
    post = client.post("/v1/generations", json={"prompt": "a"}, headers=KEYS["alice"])
    assert (post.headers["x-ratelimit-limit"], post.headers["x-ratelimit-remaining"]) == ("5", "4")
    assert client.get("/v1/models", headers=KEYS["bob"]).headers["x-ratelimit-remaining"] == "2"
    assert "x-ratelimit-limit" not in client.get("/health").headers  # probes are not limited


def test_the_job_list_pages_newest_first_and_shows_only_the_callers_jobs(keyed):
    client, svc = keyed()
    ids = []
    for index in range(5):
        job = svc.store.create(
            model="tiny", prompt=f"p{index}", params={"duration": 0.2}, fmt="wav", stream=False,
            owner=identity("alice-key"),
        )  # fmt: skip
        ids.append(job.id)
    bobs = svc.store.create(
        model="tiny", prompt="b", params={}, fmt="wav", stream=False, owner=identity("bob-key")
    )
    svc.store.cancel(ids[1])
    seen, url = [], "/v1/generations?limit=2"
    while url:
        page = client.get(url, headers=KEYS["alice"]).json()
        assert len(page["data"]) <= 2
        seen += [job["id"] for job in page["data"]]
        url = page["next"]
        assert page["has_more"] == (url is not None)
    assert seen == ids[::-1]  # newest first, every job once, none of bob's
    canceled = client.get("/v1/generations?status=canceled", headers=KEYS["alice"]).json()
    assert [job["id"] for job in canceled["data"]] == [ids[1]] and canceled["next"] is None
    assert [j["id"] for j in client.get("/v1/generations", headers=KEYS["bob"]).json()["data"]] == [
        bobs.id
    ]
    # A cursor that is another key's job, or no id at all, is refused alike.
    for after in (bobs.id, "nonsense"):
        bad = client.get(f"/v1/generations?after={after}", headers=KEYS["alice"])
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "after"]
    assert client.get("/v1/generations?limit=101", headers=KEYS["alice"]).status_code == 422
    # "Delete all my jobs": a client deleting each page before following `next` reaches the end
    # (a cursor naming the deleted last job of the page was a 422).
    from musicgen_train.serve.deletion import delete_finished

    for job_id in ids:
        svc.store.cancel(job_id)  # finished, so deletable
    deleted, url = [], "/v1/generations?limit=2&status=canceled"
    while url:
        page = client.get(url, headers=KEYS["alice"])
        assert page.status_code == 200, page.text
        for job in page.json()["data"]:
            assert delete_finished(svc.store, job["id"])
            deleted.append(job["id"])
        url = page.json()["next"]
    assert deleted == ids[::-1]


def test_readiness_while_models_load_says_when_to_retry_and_metrics_say_it_too(settings, client):
    loading = TestClient(create_app(settings))  # generation process not started: nothing loaded
    ready = loading.get("/health/ready")
    assert ready.status_code == 503 and ready.headers["retry-after"] == "10"
    metrics = loading.get("/metrics").text
    assert "musicgen_ready 0.0" in metrics and "musicgen_models_loaded 0.0" in metrics
    assert client.get("/health/ready").status_code == 200
    metrics = client.get("/metrics").text
    assert "musicgen_ready 1.0" in metrics and "musicgen_models_loaded 1.0" in metrics
