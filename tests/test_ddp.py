"""DDP on CPU: ``strategy=ddp trainer.devices=2 trainer.accelerator=cpu`` trains the demo recipe
with two gloo processes, each on its own half of the data."""

import csv
import json
import math
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from musicgen_train.config import load_config

pytestmark = pytest.mark.slow

DDP = ["strategy=ddp", "trainer.devices=2", "trainer.accelerator=cpu"]


def test_ddp_two_cpu_processes(work_home, tmp_path, tiny_model_dir):
    from musicgen_train.data.prepare import ensure_token_cache

    cfg = load_config(DDP)
    cache = ensure_token_cache(cfg)  # prepared once here, so both ranks find it
    rows = [json.loads(line) for line in (cache / "manifest.jsonl").read_text().splitlines()]
    n_train = sum(row["split"] == "train" for row in rows)
    batch = cfg.data.batch_size
    # Lightning's distributed sampler gives each rank ceil(n / 2) samples.
    per_rank = math.ceil(math.ceil(n_train / 2) / batch)
    assert per_rank < math.ceil(n_train / batch), "too little demo data to tell DDP apart"
    steps = per_rank + 1  # cross one epoch boundary

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "musicgen_train.cli",
            "train",
            *DDP,
            "logger=csv",
            f"trainer.max_steps={steps}",
            f"trainer.val_check_interval={steps}",
            "trainer.log_every_n_steps=1",
            "trainer.val_before_training=false",
            "callbacks.samples.every_n_steps=0",
            "trainer.enable_progress_bar=false",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    # One line per thing to know: rank 1 prepares and trains silently, and neither process
    # announces itself (the checkpoint below shows both ranks took part).
    assert output.count("training tiny (full)") == 1 and output.count("prepared 24 file(s)") == 1
    assert "GLOBAL_RANK" not in output and "distributed_backend=" not in output
    assert "DistributedSampler" not in output

    run_dir = work_home / "runs" / "demo"
    checkpoint = torch.load(
        run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    assert checkpoint["global_step"] == steps
    saved_cfg = checkpoint["hyper_parameters"]["cfg"]
    assert saved_cfg["strategy"]["name"] == "ddp" and saved_cfg["trainer"]["devices"] == 2
    # Each rank went through its half of the data: the first epoch lasted `per_rank` batches.
    progress = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]
    assert checkpoint["epoch"] == 1
    assert progress["total"]["completed"] - progress["current"]["completed"] == per_rank

    # Training moved the weights away from the tiny model's and kept them finite.
    initial = load_file(tiny_model_dir / "model.safetensors")
    state = checkpoint["state_dict"]
    moved = 0
    for key, value in state.items():
        name = key.removeprefix("model.")
        assert torch.isfinite(value).all(), key
        moved += name in initial and not torch.equal(initial[name], value)
    assert moved >= len(state) // 2

    (metrics_file,) = (run_dir / "csv").glob("version_*/metrics.csv")
    with open(metrics_file) as handle:
        rows = list(csv.DictReader(handle))
    train_ce = {int(r["step"]): float(r["train/ce"]) for r in rows if r.get("train/ce")}
    val_ce = [float(r["val/ce"]) for r in rows if r.get("val/ce")]
    assert sorted(train_ce) == list(range(steps))
    assert all(math.isfinite(v) and 0 < v < 10 for v in [*train_ce.values(), *val_ce])
    assert len(val_ce) == 1
