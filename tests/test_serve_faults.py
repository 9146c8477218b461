"""Faults a new user found (issue 13): the queue bound under concurrent creates, malformed
bodies, job ownership, key guessing, strict durations and limits, readiness during a restart."""

from __future__ import annotations

import json
import threading

import pytest
from fastapi.testclient import TestClient
from serve_helpers import (
    make_settings,
    served,
    wait_for,
)

from musicgen_train.generation import GenerationEngine
from musicgen_train.serve.app import create_app
from musicgen_train.serve.errors import EXCERPT_CHARS
from musicgen_train.serve.jobs import JobStore

JOB = {"prompt": "a", "duration": 0.2}


# --- the queue bound is one atomic step ----------------------------------------------------------


def test_concurrent_creates_never_pass_the_queue_bound(database_url):
    store = JobStore(database_url)
    bound, clients, attempts = 10, 16, 6
    accepted = []
    start = threading.Barrier(clients)

    def client() -> None:
        start.wait()  # all at once, the race the old count-then-insert lost
        for _ in range(attempts):
            job = store.create(
                model="m", prompt="p", params=JOB, fmt="wav", stream=False, max_queued=bound
            )
            if job is not None:
                accepted.append(job.id)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(accepted) == bound and store.count("queued") == bound
    # A claimed job frees its place: exactly one more fits.
    assert store.claim(accepted[0], "w")
    assert store.create(
        model="m", prompt="p", params=JOB, fmt="wav", stream=False, max_queued=bound
    )
    assert not store.create(
        model="m", prompt="p", params=JOB, fmt="wav", stream=False, max_queued=bound
    )
    store.close()


def test_an_old_database_gains_the_owner_column(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # the table as the previous version made it
        conn.execute(
            "CREATE TABLE generation_jobs (id VARCHAR(36) PRIMARY KEY, model VARCHAR(200) NOT "
            "NULL, prompt TEXT NOT NULL, params TEXT NOT NULL, format VARCHAR(8) NOT NULL, "
            "stream BOOLEAN NOT NULL, status VARCHAR(16) NOT NULL, progress FLOAT NOT NULL, "
            "error TEXT, worker VARCHAR(64), attempts INTEGER NOT NULL, created_at FLOAT NOT "
            "NULL, started_at FLOAT, finished_at FLOAT, heartbeat_at FLOAT, audio_key "
            "VARCHAR(200), audio_seconds FLOAT, audio_expired BOOLEAN NOT NULL)"
        )
        conn.execute(
            "INSERT INTO generation_jobs VALUES ('j1', 'm', 'p', '{}', 'wav', 0, 'queued', 0, "
            "NULL, NULL, 0, 1.0, NULL, NULL, NULL, NULL, NULL, 0)"
        )
    store = JobStore(f"sqlite:///{path}")
    assert store.get("j1").owner is None
    job = store.create(model="m", prompt="p", params={}, fmt="wav", stream=False, owner="key:x")
    assert store.get(job.id).owner == "key:x"
    store.close()


# --- malformed bodies --------------------------------------------------------------------------


@pytest.fixture
def idle(tmp_path, tiny_model_dir, tiny_loaded):
    """An app whose worker never starts (nothing is generated)."""
    return TestClient(create_app(make_settings(tmp_path, tiny_model_dir), served(tiny_loaded)))


MALFORMED = [
    ('{"prompt": "a", "duration": NaN}', "duration"),
    ('{"prompt": "a", "duration": Infinity}', "duration"),
    ('{"prompt": "a", "temperature": -Infinity}', "temperature"),
    ('{"prompt": "a", "top_p": NaN}', "top_p"),
    ('{"prompt": "\\ud800"}', "prompt"),
    ('{"prompt": "a", "model": "x\\udfff"}', "model"),
    ('{"prompt": "a", "duration": 1e400}', "duration"),
    ('{"prompt": "a", "seed": 1' + "0" * 5000 + "}", "body"),
    ('{"prompt": "a", "seed": 1e30}', "seed"),
    ('{"prompt": "a", "duration": true}', "duration"),
    ('{"prompt": "a", "duration": "5"}', "duration"),
    ('{"prompt": "a", "top_k": 5.0}', "top_k"),
    ('{"prompt": "' + "x" * 10_000 + '"}', "prompt"),
    ('{"prompt": "a", "model": "' + "m" * 10_000 + '"}', "model"),
    ('{"prompt": "a", "' + "k" * 10_000 + '": 1}', None),
    ('{"prompt": ["' + "\\ud800" * 3000 + '"]}', "prompt"),
    ("[" * 5000 + "]" * 5000, None),
]


@pytest.mark.parametrize(("body", "field"), MALFORMED)
def test_every_malformed_body_is_a_short_422(idle, body, field):
    response = idle.post(
        "/v1/generations", content=body.encode(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text[:300]
    assert len(response.content) < 2500  # never the whole input back
    errors = json.loads(response.content)["detail"]
    assert errors
    for error in errors:
        assert len(error["msg"]) <= 300 + 30
        if "input" in error:
            assert len(error["input"]) <= EXCERPT_CHARS + 30
    if field is not None:
        assert any(field in map(str, error["loc"]) for error in errors), errors


def test_duration_is_a_json_number_within_the_models_limits(idle, tiny_loaded):
    ok = idle.post("/v1/generations", json={"prompt": "a", "duration": 1})
    assert ok.status_code == 503  # valid (an int is a number); the idle app is not ready
    engine = GenerationEngine(tiny_loaded)
    for value in (True, "5", None, [1]):
        bad = idle.post("/v1/generations", json={"prompt": "a", "duration": value})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "duration"]
    # serve.models[].max_duration (2 s here) caps it; the engine's own limit caps that in turn
    too_long = idle.post("/v1/generations", json={"prompt": "a", "duration": 2.01})
    assert "longer than model 'tiny' allows (2 s)" in too_long.json()["detail"][0]["msg"]
    served_model = idle.app.state.service.models["tiny"]
    assert served_model.facts.max_duration == pytest.approx(engine.max_duration)


def test_the_limit_is_the_engines_when_the_config_allows_more(
    tmp_path, tiny_model_dir, tiny_loaded
):
    """Without long form (a stride that does not fit the window; melody models) a job must fit
    the model's positions; with it (the default) the configured limit holds
    (tests/test_serve_long_form.py)."""
    settings = make_settings(
        tmp_path, tiny_model_dir, models=[{"name": "tiny", "source": "x", "max_duration": 600}]
    )
    one_window = {"tiny": GenerationEngine(tiny_loaded, extend_stride=40.0)}  # window: 30 s
    client = TestClient(create_app(settings, one_window))
    limit = GenerationEngine(tiny_loaded).max_duration  # 2047 positions at 50 frames/s
    assert limit < 600
    model = client.get("/v1/models").json()["models"][0]
    assert model["limits"]["max_duration"] == pytest.approx(limit)
    assert model["limits"]["long_form"] is False
    bad = client.post("/v1/generations", json={"prompt": "a", "duration": limit + 0.1})
    assert bad.status_code == 422 and f"({limit:g} s)" in bad.json()["detail"][0]["msg"]
    long_form = TestClient(create_app(settings, served(tiny_loaded)))
    assert long_form.get("/v1/models").json()["models"][0]["limits"]["max_duration"] == 600


# --- keys: ownership and guessing --------------------------------------------------------------


@pytest.fixture
def two_keys(tmp_path, tiny_model_dir, tiny_loaded, monkeypatch):
    monkeypatch.setenv("TEST_SERVE_KEYS", "alice-key,bob-key")
    settings = make_settings(
        tmp_path,
        tiny_model_dir,
        auth={"api_keys_env": "TEST_SERVE_KEYS"},
        rate_limit={"failed_keys": "3/minute"},
    )
    with TestClient(create_app(settings, served(tiny_loaded))) as client:
        yield client


def test_a_job_belongs_to_the_key_that_created_it(two_keys):
    alice, bob = {"X-API-Key": "alice-key"}, {"X-API-Key": "bob-key"}
    job_id = two_keys.post("/v1/generations", json=JOB, headers=alice).json()["id"]
    two_keys.headers.update(alice)
    assert wait_for(two_keys, job_id)["status"] == "succeeded"
    base = f"/v1/generations/{job_id}"
    for path in (base, f"{base}/audio", f"{base}/stream", f"{base}/events"):
        answer = two_keys.get(path, headers=bob)
        assert answer.status_code == 404, path
        assert answer.json()["detail"] == f"no generation with id {job_id}"
    assert two_keys.post(f"{base}/cancel", headers=bob).status_code == 404
    two_keys.headers.pop("X-API-Key")
    assert two_keys.get(base, headers={"Authorization": "Bearer bob-key"}).status_code == 404
    assert two_keys.get(f"{base}/audio", headers=alice).status_code == 200
    assert two_keys.get(base, headers=alice).json()["id"] == job_id


def test_repeated_failed_keys_from_one_client_get_429(two_keys):
    url = "/v1/generations/00000000-0000-4000-8000-000000000000"
    assert two_keys.get(url, headers={"X-API-Key": "guess-1"}).status_code == 403
    assert two_keys.get(url).status_code == 401
    assert two_keys.get(url, headers={"X-API-Key": "guess-2"}).status_code == 403
    for headers in ({"X-API-Key": "guess-3"}, {"X-API-Key": "alice-key"}, {}):
        limited = two_keys.get(url, headers=headers)
        assert limited.status_code == 429, headers  # even the right key: no oracle for guesses
        assert "failed API keys from this client" in limited.json()["detail"]
        assert 1 <= int(limited.headers["retry-after"]) <= 60


def test_a_huge_job_id_is_not_echoed_back(idle):
    for path in ("/v1/generations/{}", "/v1/generations/{}/audio", "/v1/generations/{}/cancel"):
        url = path.format("x" * 10_000 + "\udfff".encode("utf-8", "surrogatepass").hex())
        answer = idle.post(url) if url.endswith("cancel") else idle.get(url)
        assert answer.status_code == 404 and len(answer.content) < 1000, path
        assert answer.json()["detail"].endswith("characters)")
