"""The train stage end to end on the demo recipe: CLI, checkpoints, resume, precision, loss."""

import csv
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from musicgen_train.cli import main
from musicgen_train.config import load_config
from musicgen_train.training.module import MusicgenLightningModule
from musicgen_train.training.train import (
    archive_previous_checkpoints,
    resolve_ckpt_path,
    train,
)

# Small and quick: 1 s crops, batches of 4 (6 batches per epoch on the demo), CSV logs.
FAST = [
    "logger=csv",
    "trainer.enable_progress_bar=false",
    "data.batch_size=4",
    "data.crop_seconds=1",
    "callbacks.samples.every_n_steps=0",
    "trainer.val_before_training=false",
    "trainer.log_every_n_steps=1",
]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One MUSICGEN_TRAIN_HOME for the module, so the demo token cache is prepared once."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("train-home")
    mp.setenv("MUSICGEN_TRAIN_HOME", str(path))
    yield path
    mp.undo()


@pytest.mark.slow
def test_demo_trains_through_the_cli_and_writes_checkpoints(home, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(
        [
            "train",
            *FAST,
            "trainer.max_steps=3",
            "trainer.val_check_interval=3",
            "trainer.val_before_training=true",
            f"run_dir={run_dir}",
            "callbacks.samples.every_n_steps=3",
            "callbacks.samples.duration=0.5",
            "callbacks.samples.prompts=[soft jazz piano]",
        ]
    )
    assert code == 0
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in checkpoints
    assert any(name.startswith("best-step=3-val_ce=") for name in checkpoints)
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 3
    assert last["hyper_parameters"]["cfg"]["run_dir"] == str(run_dir)
    # The codec attached for the samples stays out of the checkpoint, which loads back.
    assert not [k for k in last["state_dict"] if "codec" in k or "audio_encoder" in k]
    MusicgenLightningModule.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    samples = list((run_dir / "samples" / "step-000003").glob("*.wav"))
    assert len(samples) == 1 and "soft-jazz-piano" in samples[0].name
    with open(next(run_dir.rglob("metrics.csv"))) as metrics:
        rows = list(csv.DictReader(metrics))
    val = [float(r["val/ce"]) for r in rows if r.get("val/ce")]
    assert len(val) == 2  # before training and at step 3
    assert all(r.get(f"train/ce_q{k}") is not None for r in rows for k in range(4))
    err = capsys.readouterr()
    assert str(run_dir) in err.err + err.out
    # ckpt_path=best reads the best from last.ckpt; a fresh run moves old checkpoints aside.
    best = resolve_ckpt_path("best", run_dir)
    assert best and Path(best).name.startswith("best-step=3-") and Path(best).exists()
    assert resolve_ckpt_path("last", run_dir) == "last"
    archive_previous_checkpoints(run_dir)
    assert not (run_dir / "checkpoints").exists()
    (moved,) = run_dir.glob("checkpoints-*")
    assert (moved / "last.ckpt").exists()
    assert resolve_ckpt_path("last", run_dir) is None  # nothing left to resume: start afresh


def test_bad_resume_path_and_fp16_on_cpu_are_one_line_errors(home, tmp_path, capsys):
    assert main(["train", *FAST, f"run_dir={tmp_path}", "ckpt_path=/nowhere/x.ckpt"]) == 2
    assert "ckpt_path=/nowhere/x.ckpt: no such checkpoint" in capsys.readouterr().err
    assert main(["train", *FAST, f"run_dir={tmp_path}", "trainer.precision=16-mixed"]) == 2
    err = capsys.readouterr().err
    assert "trainer.precision=16-mixed needs a CUDA GPU" in err and "bf16-mixed" in err
    assert main(["train", *FAST, f"run_dir={tmp_path}", "ckpt_path=best"]) == 2
    assert "ckpt_path=best" in capsys.readouterr().err


def test_lora_in_bf16_mixed_trains(home, tmp_path):
    cfg = load_config(
        [
            *FAST,
            "finetune=lora",
            "trainer.precision=bf16-mixed",
            "trainer.max_steps=2",
            "trainer.limit_val_batches=0",
            f"run_dir={tmp_path}",
        ]
    )
    result = train(cfg)
    assert result.last_checkpoint and result.last_checkpoint.exists()
    state = torch.load(result.last_checkpoint, weights_only=False)["state_dict"]
    assert state and all("lora_" in key for key in state)  # only adapters are saved
    assert torch.isfinite(torch.tensor(result.metrics["train/ce"]))


class StopAt(pl.Callback):
    """Simulates a run killed after ``step`` optimizer steps (same config, same schedule)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step >= self.step:
            trainer.should_stop = True


@pytest.mark.slow
def test_resumed_run_ends_with_the_same_weights(home, tmp_path):
    # 8 steps cross an epoch boundary (6 batches per epoch); the stop at 4 is mid-epoch.
    # Decoder dropout, CFG dropout and caption field dropout are all on.
    common = [*FAST, "trainer.max_steps=8", "finetune.ema.decay=0.9"]
    straight = train(load_config([*common, f"run_dir={tmp_path / 'straight'}"]))
    stopped = train(load_config([*common, f"run_dir={tmp_path / 'resumed'}"]), [StopAt(4)])
    assert torch.load(stopped.last_checkpoint, weights_only=False)["global_step"] == 4
    resumed = train(load_config([*common, f"run_dir={tmp_path / 'resumed'}", "ckpt_path=last"]))
    a = torch.load(straight.last_checkpoint, weights_only=False)
    b = torch.load(resumed.last_checkpoint, weights_only=False)
    assert a["global_step"] == b["global_step"] == 8
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    for key in a["ema"]["shadow"]:
        assert torch.equal(a["ema"]["shadow"][key], b["ema"]["shadow"][key]), key
    moments = zip(
        a["optimizer_states"][0]["state"].values(),
        b["optimizer_states"][0]["state"].values(),
        strict=True,
    )
    assert all(torch.equal(x["exp_avg"], y["exp_avg"]) for x, y in moments)


@pytest.mark.slow
def test_validation_loss_falls_on_the_demo(home, tmp_path):
    cfg = load_config(
        [
            "logger=csv",
            "trainer.enable_progress_bar=false",
            "callbacks.samples.every_n_steps=0",
            "data.crop_seconds=2",
            "trainer.max_steps=30",
            "trainer.val_check_interval=30",
            f"run_dir={tmp_path}",
        ]
    )
    result = train(cfg)
    start, end = result.metrics["val/ce_start"], result.metrics["val/ce"]
    assert start > 4.0  # about ln(64) = 4.16 for an untrained model
    assert end < start - 1.0
    assert result.best_checkpoint and "best-step=30" in result.best_checkpoint.name


def test_lightning_lines_print_once_and_without_tips():
    """With the CLI's logging set up, Lightning's own console handler would print every line a
    second time; its product tips are dropped."""
    import io
    import logging

    from musicgen_train.training.train import route_lightning_logs

    lightning = logging.getLogger("lightning")
    saved = list(lightning.handlers)
    theirs = io.StringIO()
    lightning.addHandler(logging.StreamHandler(theirs))  # what `import lightning` does
    ours = io.StringIO()
    root, handler = logging.getLogger(), logging.StreamHandler(ours)
    root.addHandler(handler)
    try:
        route_lightning_logs()
        assert lightning.handlers == []
        info = logging.getLogger("lightning.pytorch.utilities.rank_zero")
        level = info.level
        info.setLevel(logging.INFO)
        info.info("`Trainer.fit` stopped: `max_steps=100` reached.")
        info.info("💡 Tip: For seamless cloud logging, try installing litlogger")
        info.setLevel(level)
        assert ours.getvalue() == "`Trainer.fit` stopped: `max_steps=100` reached.\n"
        assert theirs.getvalue() == ""
    finally:
        root.removeHandler(handler)
        lightning.handlers[:] = saved


def test_limit_val_batches_zero_trains_without_any_validation(home, tmp_path):
    # The demo recipe validates before training too; that validation found no val/ce (KeyError).
    cfg = load_config(
        [
            *FAST,
            "trainer.val_before_training=true",
            "trainer.limit_val_batches=0",
            "trainer.max_steps=1",
            f"run_dir={tmp_path}",
        ]
    )
    result = train(cfg)
    assert not [key for key in result.metrics if key.startswith("val/")]
    assert result.best_checkpoint is None and result.last_checkpoint.exists()
