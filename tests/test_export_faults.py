"""Export under faults a user meets: an output folder that holds their own files, a damaged or
moved run folder, a full disk. Each is one line (exit code 2), and nothing is lost or registered.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from test_export import TRAIN

from musicgen_train.cli import main
from musicgen_train.config import load_config
from musicgen_train.sources.registry_store import Registry
from musicgen_train.training.train import TrainResult, train


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> TrainResult:
    run_dir = tmp_path_factory.mktemp("runs") / "full"
    return train(load_config([*TRAIN, f"run_dir={run_dir}"]))


@pytest.fixture(scope="module")
def registry_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('registry') / 'mlflow.db'}"


def _export(registry_uri: str, run_dir: Path, output: Path, name: str, *extra: str) -> list[str]:
    return [
        "export",
        f"run_dir={run_dir}",
        f"registry.uri={registry_uri}",
        f"registry.name={name}",
        f"export.output={output}",
        *extra,
    ]


def _versions(registry_uri: str, name: str) -> list[int]:
    registry = Registry(registry_uri)
    if not registry._exists(name):
        return []
    return [int(v.version) for v in registry.versions(name)]


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_an_output_folder_of_other_files_is_never_replaced(run, registry_uri, tmp_path, capsys):
    mine = tmp_path / "my-music"
    mine.mkdir()
    (mine / "song.txt").write_text("my only copy")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("notes")
    capsys.readouterr()
    assert main(_export(registry_uri, run.run_dir, mine, "mine")) == 2
    err = _error(capsys)
    assert f"export.output={mine} already exists and is not a model folder" in err
    assert (mine / "song.txt").read_text() == "my only copy"
    assert sorted(p.name for p in mine.iterdir()) == ["song.txt"]

    assert main(_export(registry_uri, run.run_dir, a_file, "mine")) == 2
    assert f"export.output={a_file} already exists and is not a model folder" in _error(capsys)
    assert a_file.read_text() == "notes"

    assert main(_export(registry_uri, run.run_dir, a_file / "model", "mine")) == 2
    assert f"{a_file} is a file, not a folder" in _error(capsys)
    assert _versions(registry_uri, "mine") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my-music", "notes.txt"]


def test_an_empty_folder_or_an_earlier_export_is_replaced(run, registry_uri, tmp_path, capsys):
    out = tmp_path / "empty"
    out.mkdir()
    assert main(_export(registry_uri, run.run_dir, out, "again")) == 0
    assert (out / "checksums.json").is_file()
    again = [*_export(registry_uri, run.run_dir, out, "again"), "export.new_version=true"]
    assert main(again) == 0  # an earlier export, replaced by a new version's folder
    assert _versions(registry_uri, "again") == [1, 2]


def test_best_from_a_corrupt_last_checkpoint_is_one_line(run, registry_uri, tmp_path, capsys):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    data = run.last_checkpoint.read_bytes()
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    assert main(_export(registry_uri, run_dir, tmp_path / "out", "corrupt-last")) == 2
    err = _error(capsys)
    assert f"checkpoint=best: {last} is corrupt or truncated" in err
    assert "checkpoint=<path to a .ckpt file>" in err
    assert not (tmp_path / "out").exists()
    assert _versions(registry_uri, "corrupt-last") == []


def _moved_run(run: TrainResult, dest: Path) -> tuple[Path, Path]:
    """A copy of the run elsewhere whose last.ckpt records its best checkpoint at a path that
    no longer exists (the run was trained on another machine, or moved)."""
    shutil.copytree(run.run_dir / "checkpoints", dest / "checkpoints")
    last = dest / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=False)
    best_name = None
    for key, value in state["callbacks"].items():
        if key.startswith("ModelCheckpoint") and value.get("best_model_path"):
            best_name = Path(value["best_model_path"]).name
            value["best_model_path"] = f"/cluster/gone/checkpoints/{best_name}"
    assert best_name and best_name != "last.ckpt"
    torch.save(state, last)
    return dest / "checkpoints" / best_name, last


def test_a_moved_run_folder_exports_its_own_best(run, registry_uri, tmp_path, capsys):
    best, last = _moved_run(run, tmp_path / "moved")
    assert main(_export(registry_uri, tmp_path / "moved", tmp_path / "out", "moved")) == 0
    version = Registry(registry_uri).client.get_model_version("moved", "1")
    assert version.tags["checkpoint"] == str(best.resolve())

    best.unlink()
    capsys.readouterr()
    assert main(_export(registry_uri, tmp_path / "moved", tmp_path / "out", "moved")) == 2
    err = _error(capsys)
    assert err.startswith(f"musicgen-train: error: checkpoint=best: {last} records ")
    assert f"/cluster/gone/checkpoints/{best.name}" in err and str(best) in err
    assert _versions(registry_uri, "moved") == [1]


DISK_FULL = """
import resource, signal, sys
from musicgen_train.cli import main
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.exit(main(sys.argv[2:]))
"""


def test_a_full_disk_while_writing_is_one_line_and_keeps_the_old_export(
    run, registry_uri, tmp_path, capsys
):
    out = tmp_path / "exports" / "full-disk"
    args = _export(registry_uri, run.run_dir, out, "full-disk")
    assert main(args) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    weights = (out / "model.safetensors").stat().st_size
    # Any file larger than this cannot be written: the weights fail, the registry's database
    # (already created, a little smaller) can still be read.
    limit = max(weights - 4096, 0)
    assert Path(registry_uri.removeprefix("sqlite:///")).stat().st_size < limit
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(DISK_FULL),
            str(limit),
            *args,
            "export.new_version=true",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"musicgen-train: error: cannot write the model folder {out} (")
    assert "File too large" in last_line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old export is intact
    assert [p.name for p in out.parent.iterdir()] == ["full-disk"]  # no staging folder left
    assert _versions(registry_uri, "full-disk") == [1]


def test_exported_files_are_readable_by_other_users(run, registry_uri, tmp_path, capsys):
    old = os.umask(0o022)
    try:
        out = tmp_path / "shared"
        assert main(_export(registry_uri, run.run_dir, out, "shared")) == 0
        dest = tmp_path / "downloaded"
        download = ["registry", "download", f"registry.uri={registry_uri}", "registry.name=shared"]
        assert main([*download, f"registry.output={dest}"]) == 0
    finally:
        os.umask(old)
    for folder in (out, dest):
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file()}
        assert "model.safetensors" in modes
        assert modes == dict.fromkeys(modes, 0o644), modes
