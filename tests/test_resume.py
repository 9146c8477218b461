"""Exact resume: a run resumed from any checkpoint ends bitwise equal to one never interrupted.

The uninterrupted run writes ``last.ckpt`` every ``k`` optimizer steps; a copy of the one taken
at step ``k`` is what a run killed right after that save would find. The resumed run starts from
that copy in a fresh run folder and must end with the same weights, EMA weights and Adam moments
(max abs diff == 0), whether step ``k`` is an epoch's last batch or the middle of an epoch, for
full and LoRA fine-tuning, with gradient accumulation.
"""

import shutil
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from musicgen_train.config import load_config
from musicgen_train.training.train import train

# The demo recipe's training split (20 clips), 1 s crops, batches of 4: 5 batches per epoch. Decoder
# dropout, CFG dropout and EMA are on; validation at every epoch end.
FAST = [
    "logger=csv",
    "trainer.enable_progress_bar=false",
    "data.batch_size=4",
    "data.crop_seconds=1",
    "callbacks.samples.every_n_steps=0",
    "callbacks.lr_monitor=false",
    "trainer.val_before_training=false",
    "trainer.log_every_n_steps=1",
    "trainer.limit_val_batches=1",
    "finetune.ema.decay=0.9",
]
BATCHES_PER_EPOCH = 5


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """One MUSICGEN_TRAIN_HOME for the module, so the demo token cache is prepared once."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MUSICGEN_TRAIN_HOME", str(tmp_path_factory.mktemp("resume-home")))
    yield
    mp.undo()


class KeepCheckpoint(pl.Callback):
    """Copies ``last.ckpt`` as soon as it holds optimizer step ``step`` (what a kill leaves)."""

    def __init__(self, folder: Path, step: int, target: Path):
        self.source, self.step, self.target = folder / "last.ckpt", step, target

    def _copy(self) -> None:
        if self.target.exists() or not self.source.exists():
            return
        if torch.load(self.source, weights_only=False)["global_step"] == self.step:
            shutil.copy(self.source, self.target)

    def on_train_batch_start(self, trainer, *args) -> None:
        self._copy()

    def on_train_end(self, trainer, *args) -> None:
        self._copy()


def max_abs_diff(a: dict, b: dict) -> dict:
    """Per kind of state, the largest absolute difference between two checkpoints."""
    assert a["state_dict"].keys() == b["state_dict"].keys()

    def worst(pairs):
        return max(float((x.float() - y.float()).abs().max()) for x, y in pairs)

    moments = list(
        zip(
            a["optimizer_states"][0]["state"].values(),
            b["optimizer_states"][0]["state"].values(),
            strict=True,
        )
    )
    assert moments
    return {
        "weights": worst((a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"]),
        "ema": worst((a["ema"]["shadow"][k], b["ema"]["shadow"][k]) for k in a["ema"]["shadow"]),
        "exp_avg": worst((x["exp_avg"], y["exp_avg"]) for x, y in moments),
        "exp_avg_sq": worst((x["exp_avg_sq"], y["exp_avg_sq"]) for x, y in moments),
    }


class FinalState(pl.Callback):
    """Writes the state training ends with to ``path`` (whatever ``last.ckpt`` holds)."""

    def __init__(self, path: Path):
        self.path = path

    def on_train_end(self, trainer, *args) -> None:
        trainer.save_checkpoint(self.path)


# (finetune, accumulation, checkpoint every k optimizer steps, total optimizer steps, what
# writes the checkpoint: "steps" = every_n_train_steps=k, "val" = the validation every k batches
# as in the demo recipe). Lightning steps the optimizer at an epoch's last batch whatever the
# accumulation: ceil(5 / a) steps per epoch.
CASES = {
    # step 5 = batch 5: the first epoch's last batch
    "full-epoch-end": ("full", 1, 5, 8, "steps"),
    # the same, saved after the validation at batch 5 (the demo's checkpoints)
    "full-val-epoch-end": ("full", 1, 5, 8, "val"),
    # step 3 = batches 2, 4, 5 with accumulation 2: the epoch's last batch again
    "lora-accum-epoch-end": ("lora", 2, 3, 5, "steps"),
    # step 2 = batch 4 of 5: mid-epoch
    "full-accum-mid-epoch": ("full", 2, 2, 5, "steps"),
    # step 8 = batch 3 of the second epoch: mid-epoch after an epoch boundary
    "lora-mid-epoch": ("lora", 1, 8, 10, "steps"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_resume_from_a_checkpoint_is_exact(home, tmp_path, case):
    finetune, accumulate, k, total, writer = CASES[case]
    steps_per_epoch = -(-BATCHES_PER_EPOCH // accumulate)
    assert (k % steps_per_epoch == 0) == ("epoch-end" in case)
    save = (
        [f"callbacks.checkpoint.every_n_train_steps={k}"]
        if writer == "steps"
        else [f"trainer.val_check_interval={k * accumulate}"]
    )
    common = [
        *FAST,
        *save,
        f"finetune={finetune}",
        f"trainer.accumulate_grad_batches={accumulate}",
        f"trainer.max_steps={total}",
    ]
    kept = tmp_path / "killed-at.ckpt"
    straight_dir, resumed_dir = tmp_path / "straight", tmp_path / "resumed"
    train(
        load_config([*common, f"run_dir={straight_dir}"]),
        [KeepCheckpoint(straight_dir / "checkpoints", k, kept), FinalState(tmp_path / "a.ckpt")],
    )
    assert kept.exists()
    train(
        load_config([*common, f"run_dir={resumed_dir}", f"ckpt_path={kept}"]),
        [FinalState(tmp_path / "b.ckpt")],
    )
    a = torch.load(tmp_path / "a.ckpt", weights_only=False)
    b = torch.load(tmp_path / "b.ckpt", weights_only=False)
    assert a["global_step"] == b["global_step"] == total
    assert max_abs_diff(a, b) == {"weights": 0.0, "ema": 0.0, "exp_avg": 0.0, "exp_avg_sq": 0.0}
    assert a["epoch"] == b["epoch"]
    # last.ckpt holds the final state in both runs (one file, no last-v1.ckpt)
    for folder in (straight_dir, resumed_dir):
        lasts = sorted(p.name for p in (folder / "checkpoints").glob("last*.ckpt"))
        assert lasts == ["last.ckpt"]
        last = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=False)
        assert last["global_step"] == total


def test_one_callback_writes_last_ckpt_and_saves_are_atomic(tmp_path):
    """Two writers of "last" gave last.ckpt and last-v1.ckpt; Lightning's own writer puts its
    temporary file in the system temp folder, where a kill leaves it for good."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from musicgen_train.training.checkpoint_io import AtomicCheckpointIO
    from musicgen_train.training.train import build_trainer

    cfg = load_config([*FAST, "callbacks.checkpoint.every_n_train_steps=3", f"run_dir={tmp_path}"])
    trainer = build_trainer(cfg, tmp_path)
    writers = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.save_last]
    assert len(writers) == 1 and writers[0]._every_n_train_steps == 3
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_atomic_save_keeps_the_old_file_when_a_save_fails(tmp_path, monkeypatch):
    from musicgen_train.training import checkpoint_io
    from musicgen_train.training.checkpoint_io import atomic_save, remove_stale_temporaries

    target = tmp_path / "last.ckpt"
    atomic_save({"step": 1, "w": torch.arange(4.0)}, target)
    assert torch.load(target)["step"] == 1
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~checkpoint_io._umask())

    def half_then_fail(obj, file):
        file.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_io.torch, "save", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"step": 2}, target)
    monkeypatch.undo()
    assert torch.load(target)["step"] == 1  # the previous checkpoint, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary left

    # What a kill leaves (a temp file beside the checkpoint) goes at the next start; the rest
    # of the folder stays.
    (tmp_path / ".saving-abc123.tmp").write_bytes(b"partial")
    (tmp_path / "notes.tmp").write_bytes(b"not ours")
    removed = remove_stale_temporaries(tmp_path)
    assert [p.name for p in removed] == [".saving-abc123.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "notes.tmp"]
    assert remove_stale_temporaries(tmp_path / "absent") == []


class LastAtValidation(pl.Callback):
    """At each validation's start: the step last.ckpt holds, and a copy of it (what a kill during
    that validation leaves)."""

    def __init__(self, folder: Path, copies: Path):
        self.last, self.copies, self.held = folder / "last.ckpt", copies, {}

    def on_validation_start(self, trainer, *args) -> None:
        step = trainer.global_step
        self.held[step] = torch.load(self.last, weights_only=False)["global_step"]
        shutil.copy(self.last, self.copies / f"at-validation-{step}.ckpt")


@pytest.mark.slow
def test_a_kill_during_validation_keeps_the_validation_and_its_best(home, tmp_path):
    """Lightning resumes a checkpoint written at a train batch's end as if that step's validation
    had run: a kill during the validation lost it, and the best checkpoint it had written was
    deleted at the end (CI saw a resumed run end with no best file). The step is saved after
    its validation only; a resumed run validates it again and rewrites the same best file."""
    common = [
        *FAST,
        "callbacks.checkpoint.every_n_train_steps=1",
        "trainer.val_check_interval=3",
        "trainer.max_steps=4",
    ]
    run_dir = tmp_path / "run"
    folder = run_dir / "checkpoints"
    watch = LastAtValidation(folder, tmp_path)
    train(load_config([*common, f"run_dir={run_dir}"]), [watch])
    assert watch.held == {3: 2}  # step 3's validation began with step 2 on disk, not step 3
    names = sorted(p.name for p in folder.iterdir())
    assert names[0].startswith("best-step=3-") and names[1:] == ["last.ckpt"]
    shutil.move(folder / "last.ckpt", tmp_path / "uninterrupted.ckpt")

    # A kill after the best file was written leaves it beside the older last.ckpt.
    shutil.copy(tmp_path / "at-validation-3.ckpt", folder / "last.ckpt")
    result = train(load_config([*common, f"run_dir={run_dir}", "ckpt_path=last"]))
    assert sorted(p.name for p in folder.iterdir()) == names  # the same best, no "-v1" copy
    assert result.best_checkpoint == folder / names[0]
    a = torch.load(tmp_path / "uninterrupted.ckpt", weights_only=False)
    b = torch.load(folder / "last.ckpt", weights_only=False)
    assert max_abs_diff(a, b) == {"weights": 0.0, "ema": 0.0, "exp_avg": 0.0, "exp_avg_sq": 0.0}
