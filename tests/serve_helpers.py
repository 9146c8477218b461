"""Shared pieces of the service tests: settings for a temporary service, a waiting helper, and
fixtures (``settings``, ``client``, ``idle_app``, ``database_url``, ``one_torch_thread``),
registered for every test by ``conftest.pytest_plugins``."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from musicgen_train.generation import GenerationEngine
from musicgen_train.serve.settings import ServeSettings

FINISHED = ("succeeded", "failed", "canceled")


def make_settings(tmp_path: Path, model_dir: Path, **overrides) -> ServeSettings:
    values = {
        "models": [{"name": "tiny", "source": str(model_dir), "max_duration": 2.0}],
        "database_url": f"sqlite:///{tmp_path}/jobs.db",
        "storage": str(tmp_path / "audio"),
        "precision": "fp32",  # seeded audio compared with an fp32 engine's
        "worker": {"torch_threads": 1, "batch_wait": 0.05},
        "stream": {"chunk_seconds": 0.1, "context_seconds": 0.5, "lookahead_frames": 3},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    return ServeSettings(**values)


def non_causal_tiny_engine() -> GenerationEngine:
    """A tiny MusicGen (fp32) whose EnCodec convolutions look ahead, as in the real 32 kHz codec:
    what streaming's context and held-back frames are for."""
    from transformers import MusicgenForConditionalGeneration

    from musicgen_train.model.loader import LoadedModel
    from musicgen_train.model.tiny import build_tiny_processor, tiny_config

    config = tiny_config()
    config.audio_encoder.use_causal_conv = False
    config.audio_encoder.pad_mode = "reflect"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = MusicgenForConditionalGeneration(config).eval()
    model.generation_config.decoder_start_token_id = config.decoder_start_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    loaded = LoadedModel(model=model, processor=build_tiny_processor(), source="t", path="t")
    return GenerationEngine(loaded, precision="fp32")


def served(loaded, name: str = "tiny") -> dict[str, GenerationEngine]:
    """The session's tiny model, already loaded: the app serves it from the test's process."""
    return {name: GenerationEngine(loaded)}


def wait_for(client, job_id: str, states=FINISHED, limit: float = 120.0) -> dict:
    """Poll a job until it reaches one of ``states``; the limit only guards against a hang."""
    deadline = time.monotonic() + limit
    while True:
        job = client.get(f"/v1/generations/{job_id}").json()
        if job["status"] in states:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} stuck in {job['status']}")
        time.sleep(0.05)


def wait_ready(client, limit: float = 180.0) -> dict:
    """Poll readiness until it answers 200 (models loaded in the background at start-up)."""
    deadline = time.monotonic() + limit
    while True:
        ready = client.get("/health/ready")
        if ready.status_code == 200:
            return ready.json()
        assert time.monotonic() < deadline, ready.json()
        time.sleep(0.1)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Generation on one torch thread (a busy 2-core machine thrashes with two); restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(name="settings")
def settings_fixture(tmp_path, tiny_model_dir) -> ServeSettings:
    return make_settings(tmp_path, tiny_model_dir)


@pytest.fixture(name="client")
def client_fixture(settings, tiny_loaded):
    """The service on the session's tiny model, started: its worker generates."""
    from musicgen_train.serve.app import create_app

    with TestClient(create_app(settings, served(tiny_loaded))) as client:
        yield client


@pytest.fixture(name="idle_app")
def idle_app_fixture(settings, tiny_loaded):
    """An app whose lifespan never ran: no worker, so jobs stay where the test puts them."""
    from musicgen_train.serve.app import create_app

    app = create_app(settings, served(tiny_loaded))
    return TestClient(app), app.state.service


@pytest.fixture(name="database_url", params=["sqlite", "postgresql"])
def database_url_fixture(request, tmp_path) -> str:
    """The job store's database: a SQLite file, and a real PostgreSQL server (what replicas
    share), where one is installed."""
    if request.param == "postgresql":
        return request.getfixturevalue("postgres_url")
    return f"sqlite:///{tmp_path}/jobs.db"
