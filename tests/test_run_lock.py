"""One training run per run folder: a second one is one clear line, a killed one leaves no lock."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from musicgen_train.training.run_lock import LOCK_NAME, RunInUseError, run_lock

HOLD = (
    "import fcntl, sys, time\n"
    "f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX)\n"
    "print('held', flush=True); time.sleep(120)\n"
)


def test_a_second_training_run_into_the_same_folder_is_one_clear_line(tmp_path):
    from musicgen_train.config import load_config
    from musicgen_train.training.train import train

    cfg = load_config([f"work_dir={tmp_path}", "trainer.max_steps=1"])
    run_dir = tmp_path / "runs" / "demo"
    assert str(cfg.run_dir) == str(run_dir)
    with run_lock(run_dir):
        assert "pid" in (run_dir / LOCK_NAME).read_text()
        with pytest.raises(RunInUseError, match=f"run folder {run_dir} is in use .*pid \\d+"):
            train(cfg)
    # Nothing was touched: no checkpoints moved aside, no token cache started.
    assert sorted(p.name for p in tmp_path.rglob("*")) == [LOCK_NAME, "demo", "runs"]


def test_the_lock_ends_with_its_process_even_killed(tmp_path):
    lock = tmp_path / LOCK_NAME
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunInUseError), run_lock(tmp_path):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    with run_lock(tmp_path):  # no stale lock after kill -9
        text = lock.read_text()
    assert text.startswith("pid ") and "since" in text


def test_workers_of_a_multi_process_run_take_no_lock(tmp_path):
    with run_lock(tmp_path), run_lock(tmp_path, first_process=False):
        pass  # a DDP worker runs inside the folder rank 0 holds
