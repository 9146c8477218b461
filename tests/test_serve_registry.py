"""Serving the tiny model from a local MLflow registry, as `musicgen-train serve` would."""

from __future__ import annotations

import io

import pytest
import soundfile as sf
from fastapi.testclient import TestClient
from serve_helpers import (  # noqa: F401 - one_torch_thread: a fixture
    one_torch_thread,
    wait_for,
    wait_ready,
)

from musicgen_train.cli import main
from musicgen_train.config import load_config
from musicgen_train.registry.pyfunc import pyfunc_flavor
from musicgen_train.serve.app import create_app
from musicgen_train.serve.settings import ServeSettings
from musicgen_train.sources import load_musicgen
from musicgen_train.sources.checkpoint import DEFAULT_GENERATION
from musicgen_train.sources.model_folder import atomic_folder, save_model_folder
from musicgen_train.sources.registry_store import Registry

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def registry_uri(tmp_path_factory, tiny_model_dir):
    """A local SQLite registry where version 1 of ``serve-test`` carries the alias prod."""
    folder = tmp_path_factory.mktemp("export") / "serve-test"
    tiny = load_musicgen(str(tiny_model_dir))
    with atomic_folder(folder) as work:
        save_model_folder(work, tiny.model, tiny.processor, readme="# serve-test\n")
    uri = f"sqlite:///{tmp_path_factory.mktemp('registry') / 'mlflow.db'}"
    Registry(uri).register(
        folder,
        "serve-test",
        alias="prod",
        tags={"metric.fad_vggish": "1.25"},
        metrics={"fad_vggish": 1.25},
        params={},
        **pyfunc_flavor(DEFAULT_GENERATION),
        requirements=["musicgen-train"],
    )
    return uri


def test_serves_a_registry_alias_next_to_a_local_folder(tmp_path, registry_uri, tiny_model_dir):
    cfg = load_config(
        [
            "model=models:/serve-test@prod",
            "model.max_duration=5",
            f"registry.uri={registry_uri}",
            f"serve.models=[models:/serve-test@prod,{{name: local, source: '{tiny_model_dir}'}}]",
            f"serve.database_url=sqlite:///{tmp_path}/jobs.db",
            f"serve.storage={tmp_path}/audio",
        ]
    )
    settings = ServeSettings.from_config(cfg)
    assert [m.name for m in settings.models] == ["serve-test", "local"]
    with TestClient(create_app(settings)) as client:  # loads both models at start-up
        wait_ready(client)
        models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
        served = models["serve-test"]
        assert served["registry"]["version"] == 1 and served["registry"]["aliases"] == ["prod"]
        assert served["metrics"] == {"fad_vggish": 1.25}
        # An audio prompt must be shorter than the model's window (30 s: the engine's default).
        assert served["limits"] == {
            "max_duration": 5.0,
            "max_audio_prompt_seconds": 30.0,
            "window_seconds": 30.0,
            "long_form": True,
        }
        assert models["local"]["registry"] is None

        ids = {
            name: client.post(
                "/v1/generations", json={"prompt": "a", "duration": 0.3, "model": name}
            ).json()["id"]
            for name in ("serve-test", "local")
        }
        for name, job_id in ids.items():
            job = wait_for(client, job_id)
            assert job["status"] == "succeeded" and job["model"] == name
            audio = client.get(job["links"]["audio"]).content
            assert sf.info(io.BytesIO(audio)).frames == int(0.3 * 32000)


def test_serve_refuses_a_model_that_cannot_exist(registry_uri, tmp_path, capsys):
    home = [f"serve.database_url=sqlite:///{tmp_path}/jobs.db", f"serve.storage={tmp_path}/a"]
    assert (
        main(["serve", "model=models:/serve-test@nope", f"registry.uri={registry_uri}", *home]) == 2
    )
    assert "has no alias 'nope'" in capsys.readouterr().err
    assert main(["serve", f"model={tmp_path}/missing", *home]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path}/missing" in err and "does not exist" in err and err.count("\n") == 1
