"""Test setup: no network, offline W&B, every cache in a temporary folder, one tiny model."""

import os
import tempfile
from pathlib import Path

# Set before anything imports transformers, huggingface_hub or wandb.
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="musicgen-train-tests-"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ["TRANSFORMERS_VERBOSITY"] = "error"
os.environ["MUSICGEN_TRAIN_CACHE"] = str(_SESSION_DIR / "cache")
os.environ["MUSICGEN_TRAIN_HOME"] = str(_SESSION_DIR / "home")
os.environ["MLFLOW_TRACKING_URI"] = ""
os.environ.pop("WANDB_API_KEY", None)
os.environ.pop("HF_TOKEN", None)

import pytest  # noqa: E402

# Real PostgreSQL and Redis servers for the service's shared-backend tests.
pytest_plugins = ["backend_servers", "serve_helpers"]  # fixtures every test may use


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION_DIR


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The tiny MusicGen saved once per test session, loaded by the real from_pretrained path."""
    from musicgen_train.model.tiny import ensure_tiny_model

    return ensure_tiny_model(seed=0)


@pytest.fixture(scope="session")
def tiny_loaded(tiny_model_dir):
    from musicgen_train.sources import load_musicgen

    return load_musicgen(str(tiny_model_dir))


@pytest.fixture
def work_home(tmp_path, monkeypatch) -> Path:
    """A fresh MUSICGEN_TRAIN_HOME for tests that run whole stages."""
    home = tmp_path / "home"
    monkeypatch.setenv("MUSICGEN_TRAIN_HOME", str(home))
    return home


@pytest.fixture(autouse=True)
def _generation_defaults_per_test():
    """The CLI exports generation.* as MUSICGEN_GENERATION_* for the engines it builds; a stage
    run in one test must not choose the precision of another test's engine."""
    names = [n for n in os.environ if n.startswith("MUSICGEN_GENERATION_")]
    saved = {n: os.environ[n] for n in names}
    yield
    for name in [n for n in os.environ if n.startswith("MUSICGEN_GENERATION_")]:
        if name not in saved:
            del os.environ[name]
    os.environ.update(saved)
