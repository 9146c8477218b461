"""Checkpoints are read with torch.load(weights_only=True) and a small allowlist: a checkpoint
whose pickle would run code is refused in one line, unless the user says they trust it."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from musicgen_train.cli import main
from musicgen_train.sources import load_musicgen, safe_load
from musicgen_train.sources.checkpoint import best_from_last
from musicgen_train.sources.safe_load import TRUST_ENV, UnsafeCheckpointError


class RunsCommand:
    """What a malicious checkpoint holds: unpickling it runs a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def evil(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    path.parent.mkdir()
    marker = tmp_path / "code-ran"
    torch.save({"hyper_parameters": {"cfg": {}}, "x": RunsCommand(marker)}, path)
    return path, marker


def test_a_checkpoint_that_would_run_code_is_refused_in_one_line(evil, tmp_path, capsys):
    path, marker = evil
    with pytest.raises(UnsafeCheckpointError) as caught:
        load_musicgen(str(path))
    message = str(caught.value)
    assert "posix.system" in message and f"{TRUST_ENV}=1" in message and str(path) in message
    with pytest.raises(UnsafeCheckpointError):
        best_from_last(path.parent)  # checkpoint=best reads last.ckpt too
    capsys.readouterr()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["export", f"checkpoint={path}", f"registry.uri={uri}", "registry.name=x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the "exporting" log line
    assert err.startswith("musicgen-train: error: checkpoint") and "posix.system" in err
    assert not marker.exists()  # nothing in the file ran


def test_trusted_files_load_fully_and_configs_load_safely(tmp_path, monkeypatch):
    arrays = tmp_path / "numpy.ckpt"
    torch.save({"score": np.float64(1.5)}, arrays)
    with pytest.raises(UnsafeCheckpointError, match="numpy"):
        safe_load.load(arrays)
    monkeypatch.setenv(TRUST_ENV, "1")
    assert safe_load.load(arrays)["score"] == 1.5
    monkeypatch.delenv(TRUST_ENV)

    # audiocraft's solver pickles its OmegaConf config: the allowlist rebuilds it, no full load
    solver = tmp_path / "checkpoint.th"
    torch.save({"xp.cfg": OmegaConf.create({"a": [1, 2.5], "b": {"c": "${a}"}})}, solver)
    cfg = safe_load.load(solver)["xp.cfg"]
    assert isinstance(cfg, DictConfig) and OmegaConf.to_container(cfg, resolve=True) == {
        "a": [1, 2.5],
        "b": {"c": [1, 2.5]},
    }


def test_a_deepspeed_folder_is_scanned_before_deepspeed_unpickles_it(tmp_path):
    folder = tmp_path / "zero"
    (folder / "global_step1").mkdir(parents=True)
    (folder / "latest").write_text("global_step1")
    states = folder / "global_step1" / "mp_rank_00_model_states.pt"
    torch.save({"module": {"w": torch.zeros(2)}, "ds_config": {"zero": 2}}, states)
    safe_load.check_deepspeed_folder(folder)  # plain data: fine
    torch.save({"x": RunsCommand(tmp_path / "code-ran")}, states)
    with pytest.raises(UnsafeCheckpointError, match="posix.system"):
        safe_load.check_deepspeed_folder(folder)
    assert not (tmp_path / "code-ran").exists()
