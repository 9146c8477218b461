"""The console script's options: ``--help`` and ``--cfg`` after a stage, stray words refused in
one line (each was a ``TypeError`` traceback from the stage's ``run``)."""

from __future__ import annotations

import pytest
import yaml

from musicgen_train.cli import main
from musicgen_train.pipeline import _print_summary


@pytest.mark.parametrize("stage", ["prepare", "train", "run", "export"])
def test_help_after_a_stage_prints_the_usage(stage, capsys):
    assert main([stage, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: musicgen-train STAGE") and "--cfg" in out
    assert "list | show | promote | download | delete" in out


def test_cfg_prints_the_composed_config_with_the_overrides(capsys):
    assert main(["train", "--cfg", "job", "trainer.max_steps=7", "finetune=lora"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["trainer"]["max_steps"] == 7 and cfg["finetune"]["name"] == "lora"


def test_cfg_shows_a_setting_the_stage_would_refuse(capsys):
    assert main(["prepare", "--cfg", "data.segment_seconds=0"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["data"]["segment_seconds"] == 0
    assert main(["prepare", "data.segment_seconds=0"]) == 2


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["export", "bogus"], "export takes no action word, got 'bogus'"),
        (["prepare", "--frobnicate"], "unknown option '--frobnicate' for prepare"),
    ],
)
def test_stray_words_are_one_line(args, says, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0]


def test_the_run_summary_prints_existing_paths_absolute_and_leaves_out_none(
    tmp_path, monkeypatch, caplog
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    outputs = {
        "run_dir": "runs",
        "best_checkpoint": None,
        "registered_model": "models:/demo/1",
        "train_seconds": 1.5,
    }
    with caplog.at_level("INFO", logger="musicgen_train.pipeline"):
        _print_summary(outputs)
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.split() == ["run_dir", str(tmp_path / "runs")] for line in lines)
    assert any(line.split() == ["registered_model", "models:/demo/1"] for line in lines)
    assert not any("best_checkpoint" in line for line in lines)
