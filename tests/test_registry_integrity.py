"""A registry model is checked against the registry's own record, and an interrupted export or
registration leaves the registry (and the export folder) as it was."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file, save_file

from musicgen_train.registry.pyfunc import pyfunc_flavor
from musicgen_train.sources import load_musicgen
from musicgen_train.sources.checkpoint import DEFAULT_GENERATION
from musicgen_train.sources.checksums import ChecksumError, write_checksums
from musicgen_train.sources.model_folder import atomic_folder, clean_leftovers, save_model_folder
from musicgen_train.sources.registry_store import (
    COMPLETE_TAG,
    OWNER_HOST_TAG,
    OWNER_PID_TAG,
    Registry,
)
from musicgen_train.sources.registry_uri import download_registry_model, parse_registry_uri


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def folder(tmp_path, tiny_loaded):
    dest = tmp_path / "tiny-export"
    with atomic_folder(dest) as work:
        save_model_folder(work, tiny_loaded.model, tiny_loaded.processor, readme="# tiny\n")
    return dest


@pytest.fixture
def registry(tmp_path):
    return Registry(f"sqlite:///{tmp_path / 'mlflow.db'}")


def register(registry: Registry, folder, name="tiny", alias=None):
    return registry.register(
        folder,
        name,
        alias=alias,
        **pyfunc_flavor(DEFAULT_GENERATION),
        requirements=["musicgen-train"],
    )


def rewrite_weights_and_checksums(folder) -> None:
    """What a tamperer who knows the format does: new weights, and a checksums.json to match."""
    weights = folder / "model.safetensors"
    state = load_file(weights)
    name = next(k for k in state if k.startswith("decoder.") and state[k].dtype.is_floating_point)
    state[name] = state[name] + 0.5
    save_file(state, weights, metadata={"format": "pt"})
    write_checksums(folder)


def test_a_rewritten_registry_model_is_refused_naming_the_file(registry, folder):
    register(registry, folder)
    uri = "models:/tiny/1"
    cached = download_registry_model(uri, registry.uri)
    load_musicgen(uri, registry_uri=registry.uri)  # intact: loads

    rewrite_weights_and_checksums(cached)
    with pytest.raises(ChecksumError) as caught:
        load_musicgen(uri, registry_uri=registry.uri)
    message = str(caught.value)
    assert "model.safetensors" in message and "registry" in message
    assert "\n" not in message


def test_a_plain_folder_keeps_its_own_check(folder):
    rewrite_weights_and_checksums(folder)  # consistent again: nothing else to compare with
    loaded = load_musicgen(str(folder))
    assert loaded.path == str(folder)
    (folder / "config.json").write_text((folder / "config.json").read_text() + " ")
    with pytest.raises(ChecksumError, match="config.json"):
        load_musicgen(str(folder))


def test_the_registry_records_every_file(registry, folder):
    version = register(registry, folder)
    recorded = version.tags["model_files"]
    for name in ("model.safetensors", "config.json", "README.md"):
        assert f'"{name}"' in recorded


def interrupted_version(registry: Registry, name: str, pid: int) -> str:
    """A version as a kill -9 between create_model_version and the complete tag leaves it."""
    client = MlflowClient(registry.uri)
    run = client.create_run(registry._experiment_id(), run_name=f"export-{name}")
    owner = {OWNER_HOST_TAG: socket.gethostname(), OWNER_PID_TAG: str(pid)}
    version = client.create_model_version(
        name, source="file:///nowhere", run_id=run.info.run_id, tags=owner
    )
    return version.version, run.info.run_id


def test_an_interrupted_registration_is_skipped_then_cleaned(registry, folder):
    register(registry, folder, alias="production")  # v1, complete
    version, run_id = interrupted_version(registry, "tiny", dead_pid())  # v2, killed
    client = MlflowClient(registry.uri)
    assert client.get_run(run_id).info.status == "RUNNING"

    # latest and the alias still name the complete version
    assert str(registry.resolve(parse_registry_uri("models:/tiny/latest")).version) == "1"
    assert str(registry.resolve(parse_registry_uri("models:/tiny@production")).version) == "1"

    # the next registration removes the leftover and marks its run failed
    v3 = register(registry, folder, alias="production")
    versions = sorted(int(v.version) for v in registry.versions("tiny"))
    assert versions == [1, int(v3.version)] and int(version) not in versions
    assert client.get_run(run_id).info.status == "FAILED"
    assert v3.tags[COMPLETE_TAG] == "complete"
    assert registry.resolve(parse_registry_uri("models:/tiny@production")).version == v3.version


def test_a_live_exporters_version_is_left_alone(registry, folder):
    register(registry, folder)
    version, _ = interrupted_version(registry, "tiny", pid=os.getpid())
    assert registry.clean_interrupted("tiny") == []
    assert str(version) in {str(v.version) for v in registry.versions("tiny")}


def test_a_kill_between_the_renames_restores_the_old_folder(tmp_path):
    dest = tmp_path / "model"
    dest.mkdir()
    (dest / "weights").write_text("v1")
    gone = dead_pid()
    # killed after moving the old folder aside, before renaming the new one into place
    old = tmp_path / f".model.old-{gone}-abcd1234"
    dest.rename(old)
    staging = tmp_path / f".model.partial-{gone}-xyz"
    (staging / "model").mkdir(parents=True)
    (staging / "model" / "weights").write_text("half")
    live = tmp_path / f".model.partial-{os.getpid()}-live"
    live.mkdir()

    clean_leftovers(dest)
    assert (dest / "weights").read_text() == "v1"
    assert not old.exists() and not staging.exists()
    assert live.exists()  # a live writer's staging folder is its own


def test_leftovers_are_cleaned_when_the_folder_is_written_again(tmp_path):
    dest = tmp_path / "model"
    leftover = tmp_path / f".model.partial-{dead_pid()}-abc"
    leftover.mkdir()
    with atomic_folder(dest) as work:
        (work / "weights").write_text("v2")
    assert (dest / "weights").read_text() == "v2"
    assert not leftover.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_weights_file_is_really_changed_by_the_tamper_helper(folder):
    before = load_file(folder / "model.safetensors")
    rewrite_weights_and_checksums(folder)
    after = load_file(folder / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
