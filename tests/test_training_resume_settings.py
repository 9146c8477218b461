"""Resuming with other settings, and stopping a run: what the user is told and what is kept.

- A checkpoint of another trainable set (finetune=lora over a full run, another model) is one
  line naming what differs, and the failed start writes no ``on_exception.ckpt`` (its untrained
  state at step 0 was newer than ``last.ckpt``, so the next ``ckpt_path=last`` picked it, and it
  overwrote the ``on_exception.ckpt`` of an earlier interruption).
- ``optim.lr`` (and betas, weight decay, eps) given to a resumed run are used; Lightning
  restored the checkpoint's into AdamW and the scheduler and the new value was ignored silently.
- Turning EMA on when resuming starts the average from the checkpoint's weights.
- Ctrl-C and SIGTERM end ``train`` with KeyboardInterrupt / exit status 143 and one line; Lightning
  exits 1 on Ctrl-C and 0 (success) on SIGTERM.
"""

import csv
import os
import resource
import shutil
import signal
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from omegaconf import OmegaConf
from test_train import FAST as TRAIN_FAST

from musicgen_train.cli import main
from musicgen_train.config import load_config
from musicgen_train.errors import UserError
from musicgen_train.training.module import MusicgenLightningModule
from musicgen_train.training.train import TrainResult, train

FAST = [*TRAIN_FAST, "trainer.limit_val_batches=1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A full fine-tune of 2 steps (lr 3e-3, the demo's), its checkpoint folder kept as made."""
    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("resume-settings-home")
    mp.setenv("MUSICGEN_TRAIN_HOME", str(home))
    run_dir = home / "made"
    train(
        load_config(
            [*FAST, "trainer.max_steps=2", "trainer.val_check_interval=2", f"run_dir={run_dir}"]
        )
    )
    yield run_dir / "checkpoints"
    mp.undo()


def copy_run(checkpoints, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(checkpoints, run_dir / "checkpoints")
    return run_dir


def test_a_checkpoint_of_another_mode_is_one_line_and_keeps_what_was_there(
    trained, tmp_path, capsys
):
    run_dir = copy_run(trained, tmp_path)
    folder = run_dir / "checkpoints"
    # An earlier Ctrl-C left on_exception.ckpt, newer than last.ckpt: ckpt_path=last takes it.
    shutil.copy(folder / "last.ckpt", folder / "on_exception.ckpt")
    kept = {p.name: p.read_bytes() for p in folder.iterdir()}
    code = main(
        [
            "train",
            *FAST,
            f"run_dir={run_dir}",
            "ckpt_path=last",
            "finetune=lora",
            "trainer.max_steps=4",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("musicgen-train: error: ckpt_path=")
    assert "finetune.name='full' there, 'lora' here" in err
    # Nothing was trained, so nothing was written: the folder is as it was, byte for byte.
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == kept


def test_another_model_is_named(trained, tmp_path, capsys):
    run_dir = copy_run(trained, tmp_path)
    code = main(
        [
            "train",
            *FAST,
            f"run_dir={run_dir}",
            "ckpt_path=last",
            "model=tiny-stereo",
            "trainer.max_steps=4",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "model.id='tiny' there, 'tiny-stereo' here" in err
    assert not (run_dir / "checkpoints" / "on_exception.ckpt").exists()


def test_a_resumed_run_uses_its_own_learning_rate(trained, tmp_path, recwarn):
    run_dir = copy_run(trained, tmp_path)
    result = train(
        load_config(
            [
                *FAST,
                f"run_dir={run_dir}",
                "ckpt_path=last",
                "optim.lr=1e-5",
                "optim.weight_decay=0.01",
                "optim.scheduler=constant",
                "optim.warmup_steps=0",
                "trainer.max_steps=3",
            ]
        )
    )
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 3
    groups = last["optimizer_states"][0]["param_groups"]
    assert [g["initial_lr"] for g in groups] == [1e-5, 1e-5]
    assert [g["lr"] for g in groups] == [1e-5, 1e-5]
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0]
    assert last["lr_schedulers"][0]["base_lrs"] == [1e-5, 1e-5]
    with open(next(run_dir.rglob("metrics.csv"))) as file:
        lrs = [float(r["lr/pg1"]) for r in csv.DictReader(file) if r.get("lr/pg1")]
    assert lrs == [1e-5]  # the one step this run trained (step 3), not 3e-3 restored
    # The summary printed at the end shows it too (it used to round 1e-05 to 0.0).
    assert result.summary()["lr/pg1"] == 1e-5
    # Lightning's "Checkpoint directory ... exists and is not empty" is noise on every resume.
    assert not [w for w in recwarn if "exists and is not empty" in str(w.message)]


def test_summary_keeps_small_numbers():
    metrics = {"lr": 2.5e-5, "val/ce": 2.20081}
    summary = TrainResult(Path("r"), None, None, metrics=metrics).summary()
    assert summary["lr"] == 2.5e-5 and summary["val/ce"] == 2.201


def test_ema_turned_on_when_resuming_starts_from_the_checkpoint(trained):
    checkpoint = torch.load(trained / "last.ckpt", weights_only=False)
    assert "ema" not in checkpoint
    module = MusicgenLightningModule(load_config([*FAST, "finetune.ema.decay=0.9"]))
    module.on_load_checkpoint(checkpoint)
    for name, shadow in module.ema.shadow.items():
        assert torch.equal(shadow, checkpoint["state_dict"][f"model.{name}"].float()), name


class Signal(pl.Callback):
    """Sends ``signum`` to this process after the second optimizer step."""

    def __init__(self, signum):
        self.signum = signum

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == 2:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_run_says_so_saves_and_does_not_exit_0(trained, tmp_path, caplog, signum):
    sigint = signal.getsignal(signal.SIGINT)
    run_dir = tmp_path / "run"
    cfg = load_config(
        [*FAST, f"run_dir={run_dir}", "trainer.max_steps=50", "trainer.val_check_interval=50"]
    )
    try:
        if signum == signal.SIGTERM:
            with pytest.raises(SystemExit) as stop:
                train(cfg, callbacks=[Signal(signum)])
            assert stop.value.code == 143  # Lightning's own: 0, a success for a batch system
        else:
            with pytest.raises(KeyboardInterrupt):  # the CLI: "interrupted", exit status 130
                train(cfg, callbacks=[Signal(signum)])
    finally:
        signal.signal(signal.SIGINT, sigint)  # Lightning ignores Ctrl-C once it has one
    saved = run_dir / "checkpoints" / "on_exception.ckpt"
    assert torch.load(saved, weights_only=False)["global_step"] in (2, 3)
    name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
    assert f"training stopped by {name} at step" in caplog.text
    assert f"saved to {saved}): resume with ckpt_path=last" in caplog.text


def test_no_validation_split_trains_without_validation(trained, tmp_path, caplog):
    """data.valid_fraction=0 (or one file): val_before_training stopped with KeyError 'val/ce'."""
    run_dir = tmp_path / "run"
    overrides = [*FAST, "data.valid_fraction=0", f"data.output={tmp_path / 'cache'}"]
    result = train(
        load_config(
            [
                *overrides,
                f"run_dir={run_dir}",
                "trainer.val_before_training=true",
                "trainer.max_steps=2",
                "trainer.val_check_interval=1",
            ]
        )
    )
    assert "no validation: the token cache" in caplog.text
    assert result.best_checkpoint is None and "val/ce_start" not in result.metrics
    assert not [k for k in result.metrics if k.startswith("val/")]
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 2


LIMIT = resource.getrlimit(resource.RLIMIT_FSIZE)


class FullDisk(pl.Callback):
    """After optimizer step 2 (saved whole), no file may grow past 300 kB: RLIMIT_FSIZE makes
    every write beyond it fail with EFBIG, as a full disk fails with ENOSPC."""

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == 2:
            resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, LIMIT[1]))


def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(trained, tmp_path, caplog):
    run_dir = tmp_path / "run"
    cfg = load_config(
        [*FAST, f"run_dir={run_dir}", "trainer.max_steps=3", "trainer.val_check_interval=2"]
    )
    try:
        with pytest.raises(UserError) as err:
            train(cfg, callbacks=[FullDisk()])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, LIMIT)
    folder = run_dir / "checkpoints"
    message = str(err.value)
    assert message.startswith(f"checkpoint {folder / 'last.ckpt'} could not be written: File too")
    assert "resume with ckpt_path=last" in message and "\n" not in message
    # The step-2 checkpoint is whole; neither a temporary file nor on_exception.ckpt is left.
    assert torch.load(folder / "last.ckpt", weights_only=False)["global_step"] == 2
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith("best-")) == [
        "last.ckpt"
    ]
    assert "on_exception.ckpt could not be written either" in caplog.text


def test_a_deepspeed_client_state_has_no_weights_to_check(trained):
    """DeepSpeed resumes from its own folder: its engine loads the weights, and the checkpoint
    Lightning hands the module is the rest (``state_dict`` and ``optimizer_states`` left out, as
    ``DeepSpeedStrategy.save_checkpoint`` writes it). It was refused as "lacks N weights"."""
    client_state = torch.load(trained / "last.ckpt", weights_only=False)
    del client_state["state_dict"], client_state["optimizer_states"]
    module = MusicgenLightningModule(load_config([*FAST, "finetune.ema.decay=0.9"]))
    module.on_load_checkpoint(client_state)
    assert "state_dict" not in client_state  # nothing put in for Lightning to load over it


def test_a_changed_lora_alpha_is_said_when_resuming(caplog):
    """Same shapes, so the checkpoint fits; but the adapter's output scales by alpha / r: the
    resumed model computed something else without a word."""
    import logging

    from musicgen_train.training import resume

    module = MusicgenLightningModule(load_config(["finetune=lora", "finetune.lora.alpha=32"]))
    saved = OmegaConf.to_container(load_config(["finetune=lora"]), resolve=True)  # alpha 16
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": {"cfg": saved}}
    with caplog.at_level(logging.WARNING, logger="musicgen_train.training.resume"):
        resume.check_fits(module, checkpoint, "last.ckpt")
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("resumed with finetune.lora.alpha 16 -> 32: ")
    assert "alpha/r = 2 instead of 1" in line
