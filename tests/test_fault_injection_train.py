"""Fault injection for the train stage: kill -9 a real ``musicgen-train train`` process at
seeded random points, resume with ``ckpt_path=last`` as docs/training.md says, and check that
the run ends with exactly the weights, EMA weights and Adam moments of a run never interrupted,
with one ``last.ckpt`` and no unfinished file left anywhere (checkpoint folder or temp folder).

The first kill lands inside a checkpoint save (the process kills itself when the finished bytes
are about to be renamed into place, found with an audit hook, so it works whatever writes the
file); the others come from outside after a seeded random delay, wherever the process is. The
processes fork from a fork server that imported the project once (tests/forked.py).
"""

import os
import signal
import time
from pathlib import Path

import forked
import numpy as np
import pytest
import torch

from musicgen_train.config import load_config
from musicgen_train.training.train import train

SEED = 14
STEPS = 12
ARGS = [
    "logger=csv",
    "trainer.enable_progress_bar=false",
    "data.batch_size=4",
    "data.crop_seconds=1",
    "callbacks.samples.every_n_steps=0",
    "callbacks.lr_monitor=false",
    "trainer.val_before_training=false",
    "trainer.limit_val_batches=1",
    "trainer.val_check_interval=5",  # validation (and last.ckpt) at every epoch's last batch
    "finetune.ema.decay=0.9",
    f"trainer.max_steps={STEPS}",
    "callbacks.checkpoint.every_n_train_steps=1",  # a save every step: kills often land in one
]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("MUSICGEN_TRAIN_HOME", str(tmp_path_factory.mktemp("fault-home")))
    yield
    mp.undo()


def child_env(temp: Path) -> dict:
    env = dict(os.environ)
    env["TMPDIR"] = str(temp)  # where Python's and fsspec's temporary files go
    return env


def options(env: dict) -> dict:
    """A real training process's (tests/forked.py): as many threads as the reference run in this
    process (the same float sums), and the test's environment."""
    return {"threads": torch.get_num_threads(), "env": env}


def saves_seen(last: Path) -> tuple:
    """Changes whenever last.ckpt is replaced (a new file each save)."""
    try:
        stat = last.stat()
    except FileNotFoundError:
        return ()
    return (stat.st_ino, stat.st_mtime_ns)


def kill_after(process, last: Path, delay: float, limit: float = 120) -> int:
    """Once the process has written a checkpoint, wait ``delay`` s, then kill -9 it."""
    before, deadline = saves_seen(last), time.monotonic() + limit
    while process.is_alive() and saves_seen(last) == before:
        assert time.monotonic() < deadline, "the training process wrote no checkpoint"
        time.sleep(0.02)
    time.sleep(delay)
    forked.kill(process)
    return process.exitcode


def states(path: Path) -> dict:
    ckpt = torch.load(path, weights_only=False)
    moments = [m for state in ckpt["optimizer_states"] for m in state["state"].values()]
    assert ckpt["global_step"] == STEPS
    return {
        "weights": ckpt["state_dict"],
        "ema": ckpt["ema"]["shadow"],
        "exp_avg": [m["exp_avg"] for m in moments],
        "exp_avg_sq": [m["exp_avg_sq"] for m in moments],
    }


def max_abs_diff(a, b) -> float:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        return max(max_abs_diff(a[k], b[k]) for k in a)
    if isinstance(a, list):
        assert len(a) == len(b) > 0
        return max(max_abs_diff(x, y) for x, y in zip(a, b, strict=True))
    return float((a.float() - b.float()).abs().max())


@pytest.mark.slow
def test_kill_9_during_training_then_resume_ends_like_an_uninterrupted_run(home, tmp_path):
    rng = np.random.default_rng(SEED)
    reference = train(load_config([*ARGS, f"run_dir={tmp_path / 'reference'}"]))
    run_dir, temp = tmp_path / "killed", tmp_path / "tmp"
    temp.mkdir()
    env, log = child_env(temp), tmp_path / "children.log"
    command = ["train", *ARGS, f"run_dir={run_dir}", "ckpt_path=last"]
    last = run_dir / "checkpoints" / "last.ckpt"

    # 1. killed inside a checkpoint save: the n-th one, n seeded
    nth_save = int(rng.integers(2, 6))
    killer = [".ckpt", nth_save, *command]
    code = forked.run(forked.cli_killed_at_rename, killer, log, 300, **options(env)).returncode
    assert code == -signal.SIGKILL, log.read_text()[-3000:]
    assert torch.load(last, weights_only=False)["global_step"] == nth_save - 1  # whole, older
    # The unfinished file lies beside last.ckpt (the next start removes it), none in TMPDIR.
    assert [p.name for p in temp.iterdir() if p.is_file()] == []
    (unfinished,) = last.parent.glob(".saving-*.tmp")
    # 2. killed from outside at seeded random moments, resuming each time
    kills = []
    for delay in rng.uniform(0.0, 1.5, size=2):
        child = forked.start(forked.cli, command, log, **options(env))
        kills.append(kill_after(child, last, float(delay)))
    # 3. resumed to the end
    resumed = forked.run(forked.cli, command, log, 300, **options(env))
    assert resumed.returncode == 0, log.read_text()[-3000:]

    a, b = states(reference.last_checkpoint), states(last)
    assert max_abs_diff(a, b) == 0.0, f"kills: {kills}"
    # One last.ckpt, the same best, nothing unfinished in the checkpoint or the temp folder.
    names = sorted(p.name for p in last.parent.iterdir())
    assert names == sorted(p.name for p in reference.last_checkpoint.parent.iterdir())
    assert names[-1] == "last.ckpt" and [n for n in names if n.startswith("last")] == names[-1:]
    assert [p.name for p in temp.iterdir() if p.is_file()] == []
