"""Which evaluation report export attaches to a checkpoint: the one of its bytes, also after a
later fresh run moved the run's checkpoints to ``checkpoints-<date>/``, and never the report of
an older file that had the same path."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf

from musicgen_train.registry.export import find_eval_report
from musicgen_train.sources.checkpoint import content_hash, converted_name
from musicgen_train.training.train import archive_previous_checkpoints


def _cfg(run_dir: Path, eval_report: str | None = None):
    return OmegaConf.create({"run_dir": str(run_dir), "export": {"eval_report": eval_report}})


def _evaluate(run_dir: Path, checkpoint: Path, fad: float, with_path: bool = True) -> None:
    """The report evaluate writes for ``checkpoint``: it names the checkpoint as the source and
    the folder it loaded (the checkpoint converted, named by its content digest)."""
    model = {"source": str(checkpoint), "metrics": {"fad": {"value": fad}}}
    if with_path:
        loaded = run_dir / "cache" / converted_name(checkpoint, content_hash(checkpoint))
        model["path"] = str(loaded)
    out = run_dir / "eval" / checkpoint.stem / "eval_report.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"models": [model], "metrics": {"fad": fad}}))


def _checkpoint(run_dir: Path, content: bytes) -> Path:
    path = run_dir / "checkpoints" / "best-step=4.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def _found(cfg, checkpoint: Path) -> float | None:
    report = find_eval_report(cfg, checkpoint, content_hash(checkpoint))
    return None if report is None else report["metrics"]["fad"]


def test_report_follows_checkpoints_moved_aside_by_a_fresh_run(tmp_path):
    run = tmp_path / "run"
    first = _checkpoint(run, b"first run's weights")
    _evaluate(run, first, fad=1.5)
    archive_previous_checkpoints(run)  # a fresh run in the same run_dir
    (archived,) = run.glob("checkpoints-*/best-step=4.ckpt")
    second = _checkpoint(run, b"second run's weights")  # same name, other bytes

    assert _found(_cfg(run), archived) == 1.5
    # the report names second's path, but evaluated first's bytes
    assert _found(_cfg(run), second) is None
    _evaluate(run, second, fad=2.5)  # overwrites eval/best-step=4/eval_report.json
    assert _found(_cfg(run), second) == 2.5
    assert _found(_cfg(run), archived) is None


def test_a_report_without_the_loaded_folder_is_matched_by_path(tmp_path):
    run = tmp_path / "run"
    checkpoint = _checkpoint(run, b"weights")
    _evaluate(run, checkpoint, fad=1.25, with_path=False)
    assert _found(_cfg(run), checkpoint) == 1.25
    assert _found(_cfg(run), _checkpoint(tmp_path / "other", b"weights")) is None


def test_the_given_report_wins(tmp_path):
    run = tmp_path / "run"
    checkpoint = _checkpoint(run, b"weights")
    _evaluate(run, checkpoint, fad=1.5)
    given = tmp_path / "given.json"
    given.write_text(json.dumps({"models": [], "metrics": {"fad": 9.0}}))
    assert _found(_cfg(run, str(given)), checkpoint) == 9.0
