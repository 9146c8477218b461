"""Exporting the same checkpoint with the same settings again returns the version it made; a
training run replacing the checkpoint mid-export cannot mix two checkpoints in one version."""

from __future__ import annotations

import shutil

import pytest
from test_export import TRAIN

from musicgen_train.cli import main
from musicgen_train.config import load_config
from musicgen_train.registry.export import EXPORT_KEY_TAG, export_checkpoint
from musicgen_train.sources.checkpoint import (
    CheckpointError,
    content_hash,
    load_checkpoint_model,
    pin_checkpoint,
)
from musicgen_train.sources.checksums import verify_checksums
from musicgen_train.sources.registry_store import Registry
from musicgen_train.sources.resolve import load_base
from musicgen_train.training.train import train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train(load_config([*TRAIN, "finetune=lora", f"run_dir={tmp_path_factory.mktemp('r')}"]))


@pytest.fixture(scope="module")
def registry_uri(tmp_path_factory) -> str:
    """One registry for the module (creating an MLflow database takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('registry') / 'mlflow.db'}"


def _cfg(tmp_path, run, registry_uri, name, *overrides):
    return load_config(
        [
            f"registry.name={name}",
            f"registry.uri={registry_uri}",
            f"export.output={tmp_path / 'out'}",
            f"run_dir={run.run_dir}",
            *overrides,
        ]
    )


def _versions(cfg) -> list[int]:
    return [int(v.version) for v in Registry(cfg.registry.uri).versions(cfg.registry.name)]


def test_the_same_export_twice_is_one_version(tmp_path, run, registry_uri, capsys):
    cfg = _cfg(tmp_path, run, registry_uri, "same")
    first = export_checkpoint(cfg, "best")
    assert (first.version, first.reused) == (1, False)

    # again, with an alias and into a new folder: the same version, aliased, its folder copied
    copy = tmp_path / "copy"
    again = export_checkpoint(
        _cfg(
            tmp_path, run, registry_uri, "same", "registry.alias=staging", f"export.output={copy}"
        ),
        "best",
    )
    assert (again.uri, again.reused, again.model_dir) == ("models:/same/1", True, copy)
    assert _versions(cfg) == [1]
    registry = Registry(cfg.registry.uri)
    assert {a: int(v) for a, v in registry.model("same").aliases.items()} == {"staging": 1}
    verify_checksums(again.model_dir)
    assert (again.model_dir / "model.safetensors").read_bytes() == (
        first.model_dir / "model.safetensors"
    ).read_bytes()

    # the CLI says so, and an explicit override makes a new version
    args = ["export", "registry.name=same", f"registry.uri={cfg.registry.uri}"]
    args += [f"run_dir={run.run_dir}"]
    capsys.readouterr()
    assert main([*args, f"export.output={first.model_dir}"]) == 0
    said = capsys.readouterr()
    said = said.out + said.err
    assert said.count("already registered as same version 1") == 1  # once, not log and print
    assert "export.new_version=true" in said
    assert main([*args, f"export.output={first.model_dir}", "export.new_version=true"]) == 0
    assert "registered:   models:/same/2" in capsys.readouterr().out
    assert _versions(cfg) == [1, 2]


def test_other_settings_make_a_new_version(tmp_path, run, registry_uri):
    cfg = _cfg(tmp_path, run, registry_uri, "other")
    export_checkpoint(cfg, "best")
    assert export_checkpoint(
        _cfg(tmp_path, run, registry_uri, "other", "export.generation.duration=8"), "best"
    ).reused
    other = export_checkpoint(
        _cfg(tmp_path, run, registry_uri, "other", "export.generation.duration=4"), "best"
    )
    assert (other.version, other.reused) == (2, False)
    client = Registry(cfg.registry.uri).client
    tags = [client.get_model_version("other", str(n)).tags for n in (1, 2)]
    assert tags[0][EXPORT_KEY_TAG] != tags[1][EXPORT_KEY_TAG]
    assert tags[0]["checkpoint_sha256"] == content_hash(run.best_checkpoint)[:16]


def test_a_checkpoint_replaced_while_export_reads_it_gives_the_pinned_bytes(tmp_path, run):
    ckpt = tmp_path / "last.ckpt"
    shutil.copy(run.best_checkpoint, ckpt)
    with pin_checkpoint(ckpt) as pinned:
        # the training run saves a new last.ckpt (atomic rename) and its old best goes away
        replacement = tmp_path / "new.ckpt"
        replacement.write_bytes(b"a checkpoint being written")
        replacement.replace(ckpt)
        model = load_checkpoint_model(pinned, load_base)
    assert pinned.sha256 == content_hash(run.best_checkpoint)
    assert model.cfg.finetune.name == "lora"

    ckpt.unlink()  # chosen as best, then rotated away by the training run
    with (
        pytest.raises(CheckpointError, match="was removed before it could be read"),
        pin_checkpoint(ckpt),
    ):
        pass
