"""/health/ready: the status for probes without a key, why it is not ready for API callers only,
and the database's own words in the log, never in an answer."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient
from serve_helpers import make_settings, served
from sqlalchemy.exc import OperationalError

from musicgen_train.serve.app import create_app

SECRET_PATH = "/srv/private/models/jazz/config.json"
DRIVER_ERROR = 'connection to server at "db-7.internal.example" (10.3.0.7), port 5432 failed'


@pytest.fixture
def keyed_app(tmp_path, tiny_model_dir, tiny_loaded, monkeypatch):
    """A keyed app whose worker never started (not ready) and whose model failed to load."""
    monkeypatch.setenv("TEST_READY_KEYS", "ops-key")
    settings = make_settings(tmp_path, tiny_model_dir, auth={"api_keys_env": "TEST_READY_KEYS"})
    app = create_app(settings, served(tiny_loaded))
    app.state.service.load_error = f"FileNotFoundError: {SECRET_PATH}"
    return TestClient(app), app.state.service


def test_a_probe_without_a_key_gets_the_status_alone(keyed_app):
    client, _ = keyed_app
    probe = client.get("/health/ready")
    assert probe.status_code == 503 and probe.headers["retry-after"] == "10"
    assert probe.json() == {"status": "not ready", "detail": {}}
    assert client.get("/health").json() == {"status": "ok", "detail": {}}
    operator = client.get("/health/ready", headers={"X-API-Key": "ops-key"})
    assert operator.status_code == 503
    detail = operator.json()["detail"]
    assert detail["load_error"] == f"FileNotFoundError: {SECRET_PATH}"
    assert detail["models_expected"] == ["tiny"] and detail["worker_alive"] is False
    # A wrong key is refused as on /v1 (and counted as a failed key): no oracle for guesses.
    wrong = client.get("/health/ready", headers={"Authorization": "Bearer guess"})
    assert wrong.status_code == 403


def test_the_database_driver_message_goes_to_the_log_not_to_clients(keyed_app, monkeypatch, caplog):
    client, svc = keyed_app

    def unreachable():
        raise OperationalError("SELECT 1", {}, Exception(DRIVER_ERROR))

    monkeypatch.setattr(svc.store.engine, "connect", unreachable)
    monkeypatch.setattr(svc.store, "get", lambda job_id: unreachable())
    with caplog.at_level(logging.INFO, logger="musicgen_train.serve"):
        operator = client.get("/health/ready", headers={"X-API-Key": "ops-key"})
        job = client.get(
            "/v1/generations/00000000-0000-4000-8000-000000000000",
            headers={"X-API-Key": "ops-key"},
        )
    assert operator.json()["detail"]["database"] == "unavailable (OperationalError)"
    assert job.status_code == 503 and job.headers["retry-after"] == "5"
    assert job.json() == {"detail": "the job database is unavailable: retry in 5 s"}
    assert "db-7.internal" in caplog.text  # the operator's copy
