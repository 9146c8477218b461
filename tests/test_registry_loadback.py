"""Loading a registry model back after its cached download was damaged: refused in one line that
says which folder to delete, and following that line loads the model again."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from musicgen_train.cli import main
from musicgen_train.registry.pyfunc import pyfunc_flavor
from musicgen_train.sources import load_musicgen
from musicgen_train.sources.checkpoint import DEFAULT_GENERATION
from musicgen_train.sources.checksums import ChecksumError
from musicgen_train.sources.model_folder import atomic_folder, save_model_folder
from musicgen_train.sources.registry_store import Registry
from musicgen_train.sources.registry_uri import download_registry_model


@pytest.fixture
def registry(tmp_path, tiny_loaded) -> Registry:
    folder = tmp_path / "tiny-export"
    with atomic_folder(folder) as work:
        save_model_folder(work, tiny_loaded.model, tiny_loaded.processor, readme="# tiny\n")
    registry = Registry(f"sqlite:///{tmp_path / 'mlflow.db'}")
    registry.register(
        folder, "cached", **pyfunc_flavor(DEFAULT_GENERATION), requirements=["musicgen-train"]
    )
    return registry


def test_a_damaged_cached_download_says_which_folder_to_delete(registry, tmp_path, capsys):
    uri = "models:/cached/1"
    cached = download_registry_model(uri, registry.uri)
    weights = cached / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # damaged on disk after the download

    with pytest.raises(ChecksumError) as caught:
        load_musicgen(uri, registry_uri=registry.uri)
    message = str(caught.value)
    assert "\n" not in message
    assert f"{weights} has 1000 bytes" in message
    assert f"delete {cached} and it is downloaded from the registry again" in message
    # `registry download`, the other way to "download again", meets the same cached copy
    out = tmp_path / "copy"
    download = ["registry", "download", f"registry.uri={registry.uri}", "registry.name=cached"]
    capsys.readouterr()
    assert main([*download, f"registry.output={out}"]) == 2
    assert f"delete {cached}" in capsys.readouterr().err
    assert not out.exists()

    folder = Path(re.search(r"delete (\S+) and it is", message)[1])
    shutil.rmtree(folder)  # what the line says to do
    assert load_musicgen(uri, registry_uri=registry.uri).model is not None
    assert main([*download, f"registry.output={out}"]) == 0
    assert (out / "model.safetensors").stat().st_size > 1000


def test_loading_from_a_registry_that_does_not_exist_creates_nothing(tmp_path):
    from musicgen_train.sources.registry_store import RegistryError

    home = tmp_path / "elsewhere"
    uri = f"sqlite:///{home / 'registry' / 'mlflow.db'}"
    with pytest.raises(RegistryError) as caught:
        load_musicgen("models:/jazz@production", registry_uri=uri)
    message = str(caught.value)
    assert message.startswith("cannot load models:/jazz@production: there is no MLflow registry")
    assert str(home / "registry" / "mlflow.db") in message and "MLFLOW_TRACKING_URI" in message
    assert not home.exists()  # no empty registry left behind by a read
