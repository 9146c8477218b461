"""API keys, rate limits, request size and CORS."""

from __future__ import annotations

import logging
import uuid

import pytest
from fastapi.testclient import TestClient
from serve_helpers import make_settings, served

from musicgen_train.errors import ConfigError
from musicgen_train.serve.app import create_app

JOB = {"prompt": "a", "duration": 0.2}
UNKNOWN = "/v1/generations/00000000-0000-4000-8000-000000000000"


@pytest.fixture
def keyed(tmp_path, tiny_model_dir, tiny_loaded, monkeypatch):
    """An app (no worker) with one key from the environment and one from a file."""
    monkeypatch.setenv("TEST_SERVE_KEYS", "env-key-1, ")
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text("# service keys\nfile-key-2  # the web team\n\n")
    settings = make_settings(
        tmp_path,
        tiny_model_dir,
        auth={"api_keys_env": "TEST_SERVE_KEYS", "keys_file": str(keys_file)},
        rate_limit={"generations": "2/minute", "requests": "1000/minute"},
    )
    return TestClient(create_app(settings, served(tiny_loaded)))


def test_missing_key_is_401_and_wrong_key_403(keyed):
    missing = keyed.get(UNKNOWN)
    assert missing.status_code == 401 and "missing API key" in missing.json()["detail"]
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = keyed.get(UNKNOWN, headers={"X-API-Key": "env-key-2"})
    assert wrong.status_code == 403 and wrong.json()["detail"] == "invalid API key"
    assert keyed.get(UNKNOWN, headers={"X-API-Key": "env-key-1"}).status_code == 404
    assert keyed.get(UNKNOWN, headers={"Authorization": "Bearer file-key-2"}).status_code == 404
    assert keyed.get("/v1/models").status_code == 401
    assert keyed.post("/v1/generations", json=JOB).status_code == 401
    # Probes and scrapes stay open.
    for path in ("/health", "/metrics", "/"):
        assert keyed.get(path).status_code == 200, path


def test_rate_limit_per_key_is_429_with_retry_after(keyed):
    first = {"X-API-Key": "env-key-1"}
    # Two allowed per minute; the app has no worker, so they answer 503 "not ready" but count.
    for _ in range(2):
        assert keyed.post("/v1/generations", json=JOB, headers=first).status_code == 503
    limited = keyed.post("/v1/generations", json=JOB, headers=first)
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert "rate limit exceeded (2 per 1 minute" in limited.json()["detail"]
    # Another key has its own budget; status requests have theirs.
    other = {"X-API-Key": "file-key-2"}
    assert keyed.post("/v1/generations", json=JOB, headers=other).status_code == 503
    assert keyed.get(UNKNOWN, headers=first).status_code == 404


def replicas(tmp_path, tiny_model_dir, tiny_loaded, rate_limit: dict) -> list[TestClient]:
    """Two apps on one database, as two replicas of the service (never started: no worker)."""
    apps = []
    for name in ("a", "b"):
        settings = make_settings(tmp_path / name, tiny_model_dir, rate_limit=rate_limit)
        apps.append(TestClient(create_app(settings, served(tiny_loaded))))
    return apps


def test_replicas_share_rate_limits_through_redis(
    tmp_path, tiny_model_dir, tiny_loaded, redis_url, monkeypatch
):
    key = f"key-{uuid.uuid4().hex}"  # its own counters on the session's Redis
    monkeypatch.setenv("MUSICGEN_SERVE_API_KEYS", key)
    headers = {"X-API-Key": key}

    def four_posts(rate_limit: dict) -> list[int]:
        a, b = replicas(tmp_path, tiny_model_dir, tiny_loaded, rate_limit)
        return [
            (a, b)[i % 2].post("/v1/generations", json=JOB, headers=headers).status_code
            for i in range(4)
        ]

    # 503: never started, so not ready, but counted; the fourth is one over the budget of 3,
    # spent across both replicas.
    shared = {"storage": redis_url, "generations": "3/minute"}
    assert four_posts(shared) == [503, 503, 503, 429]
    # In memory, each replica counts on its own: two each, nobody is over.
    assert four_posts({"storage": "memory://", "generations": "3/minute"}) == [503] * 4


def test_open_service_warns_and_limits_by_address(
    tmp_path, tiny_model_dir, tiny_loaded, caplog, monkeypatch
):
    monkeypatch.delenv("MUSICGEN_SERVE_API_KEYS", raising=False)
    settings = make_settings(tmp_path, tiny_model_dir, rate_limit={"requests": "3/minute"})
    with caplog.at_level(logging.WARNING):
        client = TestClient(create_app(settings, served(tiny_loaded)))
    assert "the service is OPEN" in caplog.text
    codes = [client.get(UNKNOWN).status_code for _ in range(4)]
    assert codes == [404, 404, 404, 429]


def test_missing_keys_file_is_a_clear_error(tmp_path, tiny_model_dir, tiny_loaded):
    settings = make_settings(tmp_path, tiny_model_dir, auth={"keys_file": str(tmp_path / "no")})
    with pytest.raises(ConfigError, match="serve.auth.keys_file=.* does not exist"):
        create_app(settings, served(tiny_loaded))


def test_request_body_limit_is_413(tmp_path, tiny_model_dir, tiny_loaded):
    settings = make_settings(tmp_path, tiny_model_dir, limits={"max_body_bytes": 2048})
    client = TestClient(create_app(settings, served(tiny_loaded)))
    big = {"prompt": "a" * 4000, "duration": 0.2}
    response = client.post("/v1/generations", json=big)
    assert response.status_code == 413 and "larger than 2048 bytes" in response.json()["detail"]

    def chunks():  # no Content-Length: the limit still holds while the body streams in
        yield b'{"prompt": "'
        for _ in range(10):
            yield b"a" * 500
        yield b'"}'

    streamed = client.post(
        "/v1/generations", content=chunks(), headers={"content-type": "application/json"}
    )
    assert streamed.status_code == 413


def test_cors_only_for_configured_origins(tmp_path, tiny_model_dir, tiny_loaded):
    allowed = "https://app.example.com"
    settings = make_settings(tmp_path, tiny_model_dir, cors={"allow_origins": [allowed]})
    client = TestClient(create_app(settings, served(tiny_loaded)))
    preflight = {"Origin": allowed, "Access-Control-Request-Method": "POST"}
    answer = client.options("/v1/generations", headers=preflight)
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == allowed
    other = client.options("/v1/generations", headers={**preflight, "Origin": "https://evil.test"})
    assert "access-control-allow-origin" not in other.headers
    closed = TestClient(create_app(make_settings(tmp_path, tiny_model_dir), served(tiny_loaded)))
    assert (
        "access-control-allow-origin"
        not in closed.get("/health", headers={"Origin": allowed}).headers
    )
