"""The service as demanding HTTP clients use it: HEAD probes, wrong content types, NUL bytes,
streams asked for before the models load, audio gone from storage, a broken database, and an
OpenAPI schema that lists every status code the routes answer with."""

from __future__ import annotations

import io
import sqlite3

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient
from serve_helpers import (
    served,
    wait_for,
)
from test_serve_stream import parse_wav_stream

from musicgen_train.serve.app import create_app
from musicgen_train.serve.storage import audio_key

pytestmark = pytest.mark.usefixtures("one_torch_thread")

JOB = {"prompt": "a", "duration": 0.2}


@pytest.fixture
def loading(settings):
    """An app as it is while its generation process still loads the models: none loaded yet
    (isolation=process, the lifespan not run), the job store and audio storage there."""
    app = create_app(settings)
    return TestClient(app, raise_server_exceptions=False), app.state.service


def _finished_job(svc, rate: int = 16000, seconds: float = 0.3, data: bytes | None = None):
    """A job that succeeded earlier (before a restart): its row and its stored file."""
    job = svc.store.create(
        model="tiny", prompt="a", params={"duration": seconds}, fmt="wav", stream=False
    )
    assert svc.store.claim(job.id, "earlier-worker")
    samples = np.sin(np.linspace(0, 200, int(rate * seconds))).astype(np.float32) * 0.5
    if data is None:
        buffer = io.BytesIO()
        sf.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
        data = buffer.getvalue()
    key = audio_key(job.id, "wav")
    svc.audio.put(key, data)
    assert svc.store.succeed(job.id, key, seconds)
    return svc.store.get(job.id), samples


# --- HEAD -------------------------------------------------------------------------------------


def test_head_answers_as_get_without_a_body(client):
    """Uptime monitors probe with HEAD, download tools ask a file's size first: every GET route
    answers HEAD with GET's status and headers (RFC 9110), before this 405 everywhere."""
    for path in ("/health", "/health/ready", "/v1/models", "/metrics", "/"):
        head, get = client.head(path), client.get(path)
        assert head.status_code == get.status_code == 200, path
        assert head.content == b"", path
        assert head.headers["content-type"] == get.headers["content-type"], path
    job_id = client.post("/v1/generations", json=JOB).json()["id"]
    assert wait_for(client, job_id)["status"] == "succeeded"
    audio = client.get(f"/v1/generations/{job_id}/audio")
    head = client.head(f"/v1/generations/{job_id}/audio")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(audio.content))
    assert head.headers["content-disposition"] == audio.headers["content-disposition"]
    # Streamed bodies end at once for HEAD (the stream is told the client left).
    for suffix in ("stream", "events"):
        head = client.head(f"/v1/generations/{job_id}/{suffix}")
        assert head.status_code == 200 and head.content == b"", suffix
    # Errors and routes without GET stay what they were.
    missing = client.head("/v1/generations/00000000-0000-4000-8000-000000000000")
    assert missing.status_code == 404 and missing.content == b""
    post_only = client.head("/v1/uploads")
    assert post_only.status_code == 405 and post_only.headers["allow"] == "POST"
    metrics = client.get("/metrics").text
    assert 'method="HEAD",route="/health",status="200"' in metrics


# --- bodies clients get wrong -----------------------------------------------------------------


def test_a_json_body_sent_as_another_content_type_is_415_naming_the_header(client):
    body = b'{"prompt": "a", "duration": 0.2}'
    # What `curl -d '{...}'` sends without -H: before, a 422 that quoted the bytes back.
    for content_type in ("application/x-www-form-urlencoded", "text/plain"):
        for path in ("/v1/generations", "/v1/generations/stream"):
            answer = client.post(path, content=body, headers={"content-type": content_type})
            assert answer.status_code == 415, (path, content_type, answer.text)
            detail = answer.json()["detail"]
            assert "Content-Type: application/json" in detail and content_type in detail
    accepted = client.post(
        "/v1/generations", content=body, headers={"content-type": "application/json; charset=utf-8"}
    )
    assert accepted.status_code == 202
    # A JSON body that is not an object is still a 422 about the body.
    listed = client.post("/v1/generations", json=[])
    assert listed.status_code == 422 and listed.json()["detail"][0]["loc"] == ["body"]


@pytest.mark.parametrize("field", ["prompt", "model"])
def test_nul_characters_are_refused_before_they_reach_the_database(client, field):
    """PostgreSQL's text cannot hold NUL: the insert failed with a 500 there (SQLite kept it)."""
    answer = client.post("/v1/generations", json={**JOB, field: "lo-fi\x00piano"})
    assert answer.status_code == 422, answer.text
    (error,) = answer.json()["detail"]
    assert error["loc"] == ["body", field] and "NUL" in error["msg"]


# --- streams and files the models or the storage cannot give ----------------------------------


def test_streams_asked_for_while_the_models_load_are_not_500(loading):
    """After a restart the stream link of an earlier job was a 500 (KeyError) until the models
    had loaded: a finished job's file streams at its own rate, a queued one is 503 + Retry-After."""
    client, svc = loading
    assert client.get("/health/ready").status_code == 503
    # The default model was named but listed nowhere: it is listed as loading.
    assert client.get("/v1/models").json() == {"default": "tiny", "models": [], "loading": ["tiny"]}
    done, samples = _finished_job(svc, rate=16000)
    answer = client.get(f"/v1/generations/{done.id}/stream")
    assert answer.status_code == 200, answer.text
    header, audio = parse_wav_stream(answer.content)
    assert (header["rate"], header["channels"]) == (16000, 1)
    assert np.abs(audio.reshape(-1) - samples).max() < 1e-4
    queued = svc.store.create(
        model="tiny", prompt="a", params={"duration": 0.2}, fmt="wav", stream=False
    )
    waiting = client.get(f"/v1/generations/{queued.id}/stream")
    assert waiting.status_code == 503 and waiting.headers["retry-after"] == "10"
    assert waiting.json()["detail"] == "not ready: models are loading"


def test_audio_removed_from_storage_is_410_not_500(loading):
    client, svc = loading
    job, _ = _finished_job(svc)
    svc.audio.delete(job.audio_key)  # an operator, or another replica's storage sweep
    for suffix in ("audio", "stream"):
        gone = client.get(f"/v1/generations/{job.id}/{suffix}")
        assert gone.status_code == 410, (suffix, gone.text)
        assert gone.json()["detail"] == f"the audio of generation {job.id} is gone"


def test_an_unexpected_error_is_a_json_500(loading):
    """A corrupt stored file makes the stream's format unreadable: the 500 is JSON like every
    other answer (it was plain text 'Internal Server Error')."""
    client, svc = loading
    job, _ = _finished_job(svc, data=b"RIFF not a wav file at all")
    broken = client.get(f"/v1/generations/{job.id}/stream")
    assert broken.status_code == 500
    assert broken.json() == {"detail": "internal server error"}


def test_a_broken_job_database_is_503_with_retry_after(settings, tiny_loaded, tmp_path):
    app = create_app(settings, served(tiny_loaded))
    client, svc = TestClient(app, raise_server_exceptions=False), app.state.service
    job = svc.store.create(
        model="tiny", prompt="a", params={"duration": 0.2}, fmt="wav", stream=False
    )
    assert client.get(f"/v1/generations/{job.id}").status_code == 200
    with sqlite3.connect(tmp_path / "jobs.db") as db:  # restored from a bad backup, say
        db.execute("ALTER TABLE generation_jobs RENAME TO generation_jobs_old")
    for answer in (
        client.get(f"/v1/generations/{job.id}"),
        client.post(f"/v1/generations/{job.id}/cancel"),
    ):
        assert answer.status_code == 503, answer.text
        assert answer.headers["retry-after"] == "5"
        # The driver's words (they may name an internal host) stay in the log.
        assert answer.json() == {"detail": "the job database is unavailable: retry in 5 s"}
    metrics = client.get("/metrics")  # still scraped: the queue depth is unknown, not an error
    assert metrics.status_code == 200
    assert "musicgen_queue_depth NaN" in metrics.text


# --- the schema says what the routes answer ---------------------------------------------------


def test_openapi_lists_the_error_answers_of_every_route(client):
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    error_ref = "#/components/schemas/Error"
    for path, operations in paths.items():
        for method, operation in operations.items():
            codes = set(operation["responses"])
            if path.startswith("/v1/"):
                assert {"401", "403", "429"} <= codes, (method, path, codes)
                body = operation["responses"]["429"]["content"]["application/json"]
                assert body["schema"]["$ref"] == error_ref
            if "{job_id}" in path:
                assert "404" in codes, (method, path)
    generations = paths["/v1/generations"]["post"]["responses"]
    assert {"202", "413", "415", "422", "503"} <= set(generations)
    assert {"409", "410", "503"} <= set(
        paths["/v1/generations/{job_id}/stream"]["get"]["responses"]
    )
    events = paths["/v1/generations/{job_id}/events"]["get"]["responses"]["200"]["content"]
    assert list(events) == ["text/event-stream"]
    ready = paths["/health/ready"]["get"]["responses"]
    assert ready["503"]["content"]["application/json"]["schema"]["$ref"].endswith("/Health")
    # What the routes really answered in this test module's runs is in the schema.
    seen = {
        ("get", "/v1/generations/{job_id}", "404"),
        ("post", "/v1/generations", "415"),
        ("post", "/v1/generations/{job_id}/cancel", "409"),
    }
    for method, path, code in seen:
        assert code in paths[path][method]["responses"], (method, path, code)


def test_a_duration_shorter_than_one_sample_is_refused_not_an_empty_file(client):
    """duration 1e-9 passed "> 0" and the job succeeded with a WAV of 0 samples."""
    refused = client.post("/v1/generations", json={**JOB, "duration": 1e-9})
    assert refused.status_code == 422
    (error,) = refused.json()["detail"]
    assert error["loc"] == ["body", "duration"] and "shorter than one sample" in error["msg"]
    one = client.post("/v1/generations", json={**JOB, "duration": 1 / 32000}).json()
    assert wait_for(client, one["id"])["status"] == "succeeded"
    samples, rate = sf.read(io.BytesIO(client.get(f"/v1/generations/{one['id']}/audio").content))
    assert rate == 32000 and len(samples) == 1


def test_an_unreadable_upload_says_why_without_a_python_object_address(client):
    answer = client.post("/v1/uploads", content=b"not audio at all, just text")
    assert answer.status_code == 422
    (error,) = answer.json()["detail"]
    assert error["msg"] == "cannot be read as audio (Format not recognised.)", error


def test_a_json_body_without_any_content_type_is_read_as_json(client):
    """``requests.post(url, data=json.dumps(body))`` sends no Content-Type: it was a 422 that
    quoted the body back as bytes."""
    body = b'{"prompt": "a", "duration": 0.2}'
    request = client.build_request("POST", "/v1/generations", content=body)
    assert "content-type" not in request.headers  # raw bytes: httpx names no type either
    answer = client.send(request)
    assert answer.status_code == 202, answer.text
    assert wait_for(client, answer.json()["id"])["status"] == "succeeded"
    metrics = client.get("/metrics").text
    assert 'method="POST",route="/v1/generations",status="202"' in metrics


def test_audio_answers_byte_ranges_for_players_that_seek(client):
    """Media players seek with Range, and Safari plays audio only from a server that answers
    it: the audio route ignored Range (always 200, the whole file, no Accept-Ranges)."""
    job_id = client.post("/v1/generations", json=JOB).json()["id"]
    assert wait_for(client, job_id)["status"] == "succeeded"
    url = f"/v1/generations/{job_id}/audio"
    whole = client.get(url)
    size = len(whole.content)
    assert whole.status_code == 200 and whole.headers["accept-ranges"] == "bytes"
    for asked, start, end in (
        ("bytes=0-43", 0, 43),
        ("bytes=100-", 100, size - 1),
        ("bytes=-10", size - 10, size - 1),
        ("bytes=40-99999", 40, size - 1),
    ):
        part = client.get(url, headers={"Range": asked})
        assert part.status_code == 206, asked
        assert part.headers["content-range"] == f"bytes {start}-{end}/{size}", asked
        assert part.content == whole.content[start : end + 1], asked
    beyond = client.get(url, headers={"Range": f"bytes={size}-"})
    assert beyond.status_code == 416 and beyond.headers["content-range"] == f"bytes */{size}"
    assert "outside the file" in beyond.json()["detail"]
    for ignored in ("bytes=0-1,5-6", "items=0-1", "bytes=9-3"):  # whole file, as a server may
        answer = client.get(url, headers={"Range": ignored})
        assert answer.status_code == 200 and answer.content == whole.content, ignored
    head = client.head(url, headers={"Range": "bytes=0-43"})
    assert head.status_code == 206 and head.headers["content-length"] == "44"
