"""The ``train`` stage: token cache -> Lightning Trainer -> checkpoints in ``<run_dir>``.

``ckpt_path=last|best|<path>`` resumes a run with its weights, optimizer, scheduler, EMA, loop
counters and data position (the train loader is stateful); every step re-seeds from where it is,
so a resumed run ends with the same weights as one that was never interrupted.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from musicgen_train.errors import UserError
from musicgen_train.sources.checkpoint import best_from_last
from musicgen_train.training.callbacks import (
    ExceptionCheckpoint,
    best_checkpoint,
    build_callbacks,
    checkpoint_dir,
    remove_untracked_best,
)
from musicgen_train.training.checkpoint_io import AtomicCheckpointIO, remove_stale_temporaries
from musicgen_train.training.devices import check_devices, plain_devices
from musicgen_train.training.lengths import check_training_length
from musicgen_train.training.loggers import build_loggers
from musicgen_train.training.run_lock import run_lock
from musicgen_train.training.strategy import build_strategy

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    metrics: dict = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> dict:
        return {
            "run_dir": str(self.run_dir),
            "best_checkpoint": str(self.best_checkpoint) if self.best_checkpoint else None,
            "last_checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
            "train_seconds": round(self.seconds, 1),
            # Four significant digits: round(v, 4) printed a learning rate of 1e-05 as 0.0.
            **{k: float(f"{v:.4g}") for k, v in self.metrics.items()},
        }


def run(cfg: DictConfig) -> TrainResult:
    """CLI stage ``musicgen-train train``: train, then print where everything went."""
    result = train(cfg)
    if is_main_process():
        for key, value in result.summary().items():
            log.info("  %-16s %s", key, value)
    return result


def is_main_process() -> bool:
    """False in the other ranks of a multi-process run (Lightning sets the rank it launched)."""
    return rank_zero_only.rank == 0


# With an OnExceptionCheckpoint, Lightning turns fit(ckpt_path=None) into "last" and warns; a
# fresh run has moved earlier checkpoints aside, so there is nothing to find and nothing to say.
_QUIET = (
    r".*fit\(ckpt_path=None\)` was called without a model.*",
    r".*fit\(ckpt_path=\"last\"\) is set, but there is no last checkpoint.*",
    # Said on every resume: a fresh run has moved earlier checkpoints aside, so the folder holds
    # files only when resuming, which is what the user asked for.
    r".*Checkpoint directory .* exists and is not empty.*",
    # Lightning's own pytree helper and torchdata's loader on torch 2.13: nothing to act on.
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
    r".*'set_vital' is deprecated.*",
    # MusicGen's frozen text encoder and codec are in eval mode on purpose.
    r".*Found \d+ module\(s\) in eval mode at the start of training.*",
    # A dataset of a few batches an epoch: Lightning logs every n *global* steps
    # (``_batches_that_stepped``), so the metrics still reach the loggers; the advice misleads.
    r".*The number of training batches \(\d+\) is smaller than the logging interval.*",
    # DDP validation before training pads each rank's share with repeated samples: val/ce_start
    # moves by a rounding, which the advice (validate on one device) would not be worth.
    r".*Using `DistributedSampler` with the dataloaders\. During `trainer\.validate\(\)`.*",
)


class _NoAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


def route_lightning_logs() -> None:
    """Lightning's messages once, in the project's format, without its product tips.

    ``import lightning`` adds a console handler of its own to the ``lightning`` logger, which
    also propagates to the root logger: with the CLI's logging set up, every line printed
    twice. Where the root logger has handlers, Lightning's is removed."""
    root = logging.getLogger()
    if not root.handlers:
        return  # nobody set up logging (a notebook): Lightning's handler is the only one
    lightning = logging.getLogger("lightning")
    for handler in list(lightning.handlers):
        lightning.removeHandler(handler)
    for handler in root.handlers:
        if not any(isinstance(f, _NoAdverts) for f in handler.filters):
            handler.addFilter(_NoAdverts())


def train(cfg: DictConfig, callbacks: list | None = None) -> TrainResult:
    """Train on the recipe's token cache; ``callbacks`` are added to the project's own."""
    for pattern in _QUIET:
        warnings.filterwarnings("ignore", message=pattern)
    route_lightning_logs()
    started = time.perf_counter()
    # Settings that cannot work here (DeepSpeed or fp16 without CUDA) fail before any work.
    check_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    check_devices(cfg)
    strategy = build_strategy(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    run_dir = Path(cfg.run_dir)
    with run_lock(run_dir, first_process=_is_first_process()):
        return _train_locked(cfg, run_dir, strategy, callbacks, started)


def _train_locked(cfg, run_dir: Path, strategy, callbacks, started: float) -> TrainResult:
    """``train`` once this process holds the run folder (``run_lock``)."""
    from musicgen_train.data.datamodule import TokenDataModule
    from musicgen_train.data.prepare import ensure_token_cache
    from musicgen_train.training.module import MusicgenLightningModule

    if _is_first_process():
        remove_stale_temporaries(checkpoint_dir(run_dir))  # left by a kill during a save
    ckpt_path = resolve_ckpt_path(cfg.ckpt_path, run_dir)
    ensure_token_cache(cfg)
    datamodule = TokenDataModule.from_config(cfg)
    # trainer.limit_val_batches=0 asks for no validation: nor the one before training, which
    # found no val/ce then (KeyError on the demo recipe, which validates first).
    validates = bool(cfg.trainer.limit_val_batches) and has_validation(datamodule)
    if validates:
        validates_before_the_end(cfg.trainer)
    module = MusicgenLightningModule(cfg)
    check_training_length(module.model, cfg)
    if ckpt_path is None:
        # Only once the run can start: a run that stops at its data or model would otherwise
        # leave nothing for the ckpt_path=last that the user tries next.
        archive_previous_checkpoints(run_dir)
    trainer = build_trainer(
        cfg,
        run_dir,
        extra_callbacks=callbacks or [],
        strategy=strategy,
        **({} if validates else {"limit_val_batches": 0}),
    )
    log.info("training %s (%s) -> %s", cfg.model.id, cfg.finetune.name, run_dir)
    metrics = {}
    try:
        if cfg.trainer.val_before_training and ckpt_path is None and validates:
            # The untrained model's validation loss: where the curve starts (logged at step 0).
            trainer.validate(module, datamodule=datamodule, verbose=False)
            metrics["val/ce_start"] = float(trainer.callback_metrics["val/ce"])
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except SystemExit as stop:  # Lightning's answer to Ctrl-C (exit 1) and SIGTERM (exit 0)
        raise stopped(trainer, stop) from None
    if ckpt_path is not None and _is_first_process():
        remove_untracked_best(trainer.callbacks)
    metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1})
    last = checkpoint_dir(run_dir) / "last.ckpt"
    return TrainResult(
        run_dir=run_dir,
        best_checkpoint=best_checkpoint(trainer.callbacks),
        last_checkpoint=last if last.exists() else None,
        metrics=metrics,
        seconds=time.perf_counter() - started,
    )


def has_validation(datamodule) -> bool:
    """Whether the token cache holds validation segments. Without any (``data.valid_fraction=0``,
    or a single file, which cannot be split), training goes on without validation, said in one
    line; ``val_before_training`` stopped with ``KeyError: 'val/ce'`` before."""
    datamodule.setup("fit")
    if len(datamodule.valid_set):
        return True
    log.warning(
        "no validation: the token cache %s has no validation segments (data.valid_fraction=0, "
        "or too few files to hold one out), so there is no val/ce and no best checkpoint; "
        "last.ckpt is written at the end (and every callbacks.checkpoint.every_n_train_steps)",
        datamodule.cache_dir,
    )
    return False


def validates_before_the_end(trainer_cfg: DictConfig) -> bool:
    """Whether an integer ``val_check_interval`` (training batches) comes within ``max_steps``
    optimizer steps of ``accumulate_grad_batches`` batches each. A short run of a recipe that
    validates every 25 batches (``trainer.max_steps=10``) never validated, and said nothing:
    no val/ce, no best checkpoint, the last one exported. Said in one line now."""
    every, steps = trainer_cfg.val_check_interval, trainer_cfg.max_steps
    if isinstance(every, bool) or not isinstance(every, int) or steps < 1:
        return True  # a fraction of an epoch, or an epoch budget: Lightning validates
    batches = steps * trainer_cfg.accumulate_grad_batches
    if every <= batches:
        return True
    log.warning(
        "no validation in this run: trainer.val_check_interval=%d training batches is beyond its "
        "%d (trainer.max_steps=%d x accumulate_grad_batches=%d), so there is no val/ce and no best "
        "checkpoint; set trainer.val_check_interval=%d to validate at the end",
        every,
        batches,
        steps,
        trainer_cfg.accumulate_grad_batches,
        batches,
    )
    return False


def stopped(trainer: pl.Trainer, stop: SystemExit) -> BaseException:
    """What an interrupted fit raises: Ctrl-C -> KeyboardInterrupt (the CLI prints "interrupted"
    and exits 130), SIGTERM -> exit status 143. Lightning itself exits 1 on Ctrl-C and 0 on
    SIGTERM, so a batch system saw a terminated run as a success; and it said nothing of what
    was kept. One line says where the run stopped and how to go on."""
    if not trainer.interrupted:
        return stop
    by_sigterm = isinstance(stop, SIGTERMException)
    kept = next(
        (c.written for c in trainer.callbacks if isinstance(c, ExceptionCheckpoint) and c.written),
        None,
    )
    where = f"saved to {kept}" if kept else "nothing new to save"
    log.error(
        "training stopped by %s at step %d (%s): resume with ckpt_path=last",
        "SIGTERM" if by_sigterm else "Ctrl-C",
        trainer.global_step,
        where,
    )
    return SystemExit(128 + signal.SIGTERM) if by_sigterm else KeyboardInterrupt()


def build_trainer(
    cfg: DictConfig, run_dir: Path, extra_callbacks: list = (), **overrides
) -> pl.Trainer:
    """The Trainer of ``cfg.trainer`` with the project's loggers, strategy and callbacks."""
    t = cfg.trainer
    check_precision(t.precision, t.accelerator)
    precision = resolve_precision(t.precision, t.accelerator)
    val_every = t.val_check_interval
    # An integer interval counts training batches across epochs (not within one epoch).
    across_epochs = isinstance(val_every, int) and not isinstance(val_every, bool)
    strategy = overrides.pop("strategy", None) or build_strategy(cfg)
    # DeepSpeed writes a folder of shards with its own engine; other checkpoints are atomic.
    deepspeed = type(strategy).__name__ == "DeepSpeedStrategy"
    kwargs = dict(
        plugins=[] if deepspeed else [AtomicCheckpointIO()],
        default_root_dir=str(run_dir),
        accelerator=t.accelerator,
        devices=plain_devices(t.devices),
        num_nodes=t.num_nodes,
        precision=precision,
        max_steps=t.max_steps,
        max_epochs=t.max_epochs,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val,
        val_check_interval=val_every,
        check_val_every_n_epoch=None if across_epochs else t.check_val_every_n_epoch,
        limit_val_batches=t.limit_val_batches,
        num_sanity_val_steps=t.num_sanity_val_steps,
        log_every_n_steps=t.log_every_n_steps,
        deterministic=t.deterministic,
        benchmark=t.benchmark,
        enable_progress_bar=t.enable_progress_bar,
        strategy=strategy,
        logger=build_loggers(cfg, run_dir) or False,
        callbacks=[*build_callbacks(cfg, run_dir), *extra_callbacks],
    )
    kwargs.update(overrides)
    return pl.Trainer(**kwargs)


def resolve_precision(precision, accelerator: str, cuda=None):
    """``auto``: bf16-mixed on a CUDA GPU that has bf16, 16-mixed on an older GPU, 32 on a CPU
    (bf16 autocast on a CPU without native bf16 is slower than fp32); anything else as given."""
    if str(precision) != "auto":
        return precision
    cuda = cuda or torch.cuda
    if accelerator not in ("auto", "gpu", "cuda") or not cuda.is_available():
        return "32"
    return "bf16-mixed" if native_bf16(cuda) else "16-mixed"


def native_bf16(cuda) -> bool:
    """bfloat16 in hardware (Ampere and later). torch's plain ``is_bf16_supported`` also says yes
    where bf16 is only emulated (a V100, a T4), much slower there than fp16 autocast."""
    try:
        return bool(cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch without the argument
        return bool(cuda.is_bf16_supported())


def check_precision(precision: str, accelerator: str) -> None:
    """fp16 autocast exists on CUDA only; say so in one line instead of Lightning's traceback."""
    on_cuda = accelerator in ("gpu", "cuda") or (
        accelerator == "auto" and torch.cuda.is_available()
    )
    if str(precision).startswith("16") and not on_cuda:
        raise UserError(
            f"trainer.precision={precision} needs a CUDA GPU (accelerator={accelerator}, "
            f"CUDA available: {torch.cuda.is_available()}): use trainer.precision=bf16-mixed "
            "or 32 on CPU"
        )
    # A GPU on which torch cannot even emulate bfloat16: autocast would stop at the first step.
    bf16_on_cuda = str(precision).startswith("bf16") and on_cuda and torch.cuda.is_available()
    if bf16_on_cuda and not torch.cuda.is_bf16_supported():
        raise UserError(
            f"trainer.precision={precision}: this GPU ({torch.cuda.get_device_name()}) has "
            "no bfloat16; use trainer.precision=16-mixed, or auto to pick what a GPU has"
        )


def resolve_ckpt_path(ckpt_path: str | None, run_dir: Path) -> str | None:
    """``last`` -> Lightning finds the newest; ``best`` -> read from last.ckpt; else a file."""
    if ckpt_path in (None, "", "null"):
        return None
    folder = checkpoint_dir(run_dir)
    if ckpt_path == "last":
        return "last" if any(folder.glob("*.ckpt")) else _nothing_to_resume(folder)
    if ckpt_path == "best":
        return str(best_from_last(folder, "ckpt_path"))
    path = Path(ckpt_path).expanduser()
    if not path.exists():
        raise UserError(f"ckpt_path={ckpt_path}: no such checkpoint")
    return str(path)


def _nothing_to_resume(folder: Path) -> None:
    log.info("ckpt_path=last: no checkpoint in %s yet, starting from the beginning", folder)
    return None


def archive_previous_checkpoints(run_dir: Path) -> None:
    """A fresh run keeps an earlier run's checkpoints by moving them aside, never deleting."""
    folder = checkpoint_dir(run_dir)
    if not _is_first_process():
        return  # DDP workers start after rank 0 has done this
    if folder.is_dir() and any(folder.iterdir()):
        target = folder.with_name(f"checkpoints-{time.strftime('%Y%m%d-%H%M%S')}")
        folder.rename(target)
        log.info("earlier checkpoints moved to %s (pass ckpt_path=last to resume instead)", target)


def _is_first_process() -> bool:
    """Rank 0 of node 0, before Lightning has set ranks (from the launcher's variables)."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"
