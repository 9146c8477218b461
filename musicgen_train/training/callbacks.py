"""Trainer callbacks: checkpoints (best + last), learning-rate monitor, progress bar, samples."""

from __future__ import annotations

import logging
import math
import sys
import warnings
from pathlib import Path

import torch
from lightning.pytorch.callbacks import (
    Callback,
    LearningRateMonitor,
    ModelCheckpoint,
    ModelSummary,
    OnExceptionCheckpoint,
    ProgressBar,
    TQDMProgressBar,
)
from lightning.pytorch.trainer.states import TrainerFn
from omegaconf import DictConfig

from musicgen_train.logs import is_terminal
from musicgen_train.sources.checkpoint import checkpoint_dir
from musicgen_train.training.divergence import DivergenceGuard, TrainingDiverged

log = logging.getLogger(__name__)

BEST_FILENAME = "best-step={step}-val_ce={val/ce:.4f}"


class SamplesCallback(Callback):
    """Every ``every_n_steps`` optimizer steps: audio for fixed prompts, logged by the loggers."""

    def __init__(
        self,
        run_dir: str | Path,
        every_n_steps: int,
        prompts: list[str],
        duration: float,
        guidance_scale: float,
        seed: int,
    ):
        self.run_dir = Path(run_dir)
        self.every_n_steps = every_n_steps
        self.prompts = list(prompts)
        self.duration = duration
        self.guidance_scale = guidance_scale
        self.seed = seed
        self._last_step = -1

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == 0 or step % self.every_n_steps or step == self._last_step:
            return  # (with accumulation, several batches share one optimizer step)
        self._last_step = step
        if _shards_weights(trainer):
            if step == self.every_n_steps:
                log.warning(
                    "samples skipped: %s shards the weights across processes, so one "
                    "process cannot generate alone",
                    type(trainer.strategy).__name__,
                )
            return
        if trainer.is_global_zero:
            self.write_samples(trainer, module)

    def write_samples(self, trainer, module) -> list[Path]:
        from musicgen_train.generation.engine import GenerationEngine, GenerationParams
        from musicgen_train.model.loader import LoadedModel
        from musicgen_train.training.loggers import log_audio

        params = GenerationParams(
            duration=self.duration, guidance_scale=self.guidance_scale, seed=self.seed
        )
        was_training = module.training
        module.eval()
        try:
            with module.codec_attached() as model:
                loaded = LoadedModel(model, module.processor, "training", module.model_path)
                audio = GenerationEngine(loaded).generate(self.prompts, params)
        finally:
            module.train(was_training)
        return log_audio(
            trainer, "samples", list(audio), loaded.sample_rate, self.prompts, self.run_dir
        )


def _shards_weights(trainer) -> bool:
    name = type(trainer.strategy).__name__
    stage = getattr(trainer.strategy, "config", None) or {}
    zero3 = name == "DeepSpeedStrategy" and stage.get("zero_optimization", {}).get("stage") == 3
    return name == "FSDPStrategy" or zero3


class LineProgress(ProgressBar):
    """Progress for a log file: one line at each fifth of the run (a bar redrawn in place would
    be hundreds of lines there). Used when stdout is not a terminal."""

    def __init__(self, lines: int = 5):
        super().__init__()
        self.lines = lines
        self._enabled = True
        self._next = 0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer, module) -> None:
        self._next = trainer.global_step + self._every(trainer)

    def _every(self, trainer) -> int:
        total = trainer.estimated_stepping_batches
        return max(1, math.ceil(total / self.lines)) if math.isfinite(total) else 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        every = self._every(trainer)
        if not self._enabled or not every or trainer.global_step < self._next:
            return
        self._next = trainer.global_step + every
        self._line(trainer, f"/{int(trainer.estimated_stepping_batches)}")

    def on_train_epoch_end(self, trainer, module) -> None:
        if self._enabled and not self._every(trainer):  # no step budget: a line per epoch
            self._line(trainer, "")

    def _line(self, trainer, of: str) -> None:
        metrics = {k: v for k, v in trainer.progress_bar_metrics.items() if "/" in k}
        shown = ", ".join(f"{k}={float(v):.3f}" for k, v in metrics.items())
        log.info("step %d%s, epoch %d: %s", trainer.global_step, of, trainer.current_epoch, shown)


class OneLineSummary(ModelSummary):
    """The model's parameter counts in one line instead of Lightning's table."""

    def on_fit_start(self, trainer, pl_module) -> None:
        # Lightning's summary knows no "-mixed" precision and warns that it counts 32 bits a
        # weight: under mixed precision the weights are float32, so that count is right.
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore",
                message=r"Precision \S+-mixed is not supported by the model summary",
                category=UserWarning,
            )
            super().on_fit_start(trainer, pl_module)

    @staticmethod
    def summarize(summary_data, total_parameters, trainable_parameters, model_size, *a, **k):
        log.info(
            "model: %s parameters, %s trainable (%.1f MB)",
            f"{total_parameters:,}",
            f"{trainable_parameters:,}",
            model_size,
        )


class BestCheckpoint(ModelCheckpoint):
    """The best checkpoints by ``callbacks.checkpoint.monitor``, never by a NaN or inf value:
    Lightning keeps the first value it sees however bad, so a run whose first validation was
    NaN had ``best-step=N-val_ce=nan.ckpt`` as its best, which ``python train.py`` exported."""

    @property
    def state_key(self) -> str:
        # Lightning's own key ("ModelCheckpoint{...}"): what last.ckpt files record the best
        # under, read back by resume and by ckpt_path=best.
        return "ModelCheckpoint" + super().state_key.removeprefix(type(self).__qualname__)

    def check_monitor_top_k(self, trainer, current=None) -> bool:
        if current is not None and not bool(torch.isfinite(current)):
            if trainer.is_global_zero:
                log.warning(
                    "step %d: %s is %s, so this checkpoint is not kept as a best one",
                    trainer.global_step,
                    self.monitor,
                    float(current),
                )
            return False
        return super().check_monitor_top_k(trainer, current)


class LastCheckpoint(ModelCheckpoint):
    """The one writer of ``last.ckpt``: after every validation, every ``every_n_train_steps``
    optimizer steps when set (for resuming long epochs), and at ``max_steps``, so the file
    always holds the newest state. It overwrites in place (no ``last-v1.ckpt``).

    A step that validation follows is saved only after the validation: Lightning resumes a
    checkpoint written at a train batch's end as if that step's validation had run, so a kill
    during it would lose the validation and the best checkpoint it found."""

    def __init__(self, dirpath: str | Path, every_n_train_steps: int | None = None):
        super().__init__(
            dirpath=dirpath,
            save_top_k=0,
            save_last=True,
            every_n_train_steps=every_n_train_steps or None,
            enable_version_counter=False,
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if validation_follows(trainer):
            return  # on_validation_end saves this step, with what the validation found
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        final = trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps
        if final and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer, pl_module) -> None:
        # Also when this step was saved already (before validation): the file then records the
        # best checkpoint this validation found, which ckpt_path=best reads.
        fitting = trainer.state.fn == TrainerFn.FITTING
        if fitting and not trainer.sanity_checking and not trainer.fast_dev_run:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class ExceptionCheckpoint(OnExceptionCheckpoint):
    """``on_exception.ckpt`` on Ctrl-C, SIGTERM or an error, but only when this fit trained
    something: a run that fails before its first batch (a checkpoint that does not fit, a bad
    setting) has nothing new to keep, and its untrained state at step 0 would be the newest
    checkpoint, which ``ckpt_path=last`` then picks over the real one (or it overwrote the
    ``on_exception.ckpt`` of an earlier interruption)."""

    def __init__(self, dirpath: str | Path):
        super().__init__(dirpath=str(dirpath))
        self._started_at: int | None = None  # batches begun when this fit's training started
        self.written: Path | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self._started_at = _batches_begun(trainer)

    def on_exception(self, trainer, pl_module, exception) -> None:
        if isinstance(exception, TrainingDiverged):
            # Weights about to diverge are no point to go on from: the message names the
            # checkpoints written before it (and ckpt_path=last must not pick a newer one).
            return
        if self._started_at is None or _batches_begun(trainer) <= self._started_at:
            log.info("nothing trained in this run yet, so no on_exception.ckpt is written")
            return
        try:
            # A full checkpoint (optimizer, loops), said explicitly: Lightning's default path
            # logs "`weights_only` was not set, defaulting to `False`" on every interruption.
            trainer.save_checkpoint(self.ckpt_path, weights_only=False)
        except Exception as err:  # (a full disk fails this save too: keep the first error)
            log.warning("on_exception.ckpt could not be written either: %s", err)
            return
        self.written = Path(self.ckpt_path)


def _batches_begun(trainer) -> int:
    return int(trainer.fit_loop.epoch_loop.batch_progress.total.ready)


def validation_follows(trainer) -> bool:
    """Whether the fit loop validates right after this train batch (Lightning's own decision,
    made after ``on_train_batch_end``; it has no public name, so unknown means no)."""
    loop = getattr(trainer.fit_loop, "epoch_loop", None)
    decide = getattr(loop, "_should_check_val_fx", None)
    if decide is None or not trainer.enable_validation:
        return False
    try:
        return bool(decide(trainer.fit_loop._data_fetcher))
    except (AttributeError, TypeError):
        return False


def sample_prompts(cfg: DictConfig) -> list[str]:
    """``callbacks.samples.prompts``, or (empty) the first two held-out captions of the data."""
    prompts = list(cfg.callbacks.samples.prompts or [])
    if prompts:
        return prompts
    from musicgen_train.errors import UserError
    from musicgen_train.evaluation.prompts import heldout_prompts

    try:
        return heldout_prompts(cfg.data.output, limit=2).texts
    except UserError:
        return [cfg.data.get("caption", {}).get("default") or "music"]


def build_callbacks(cfg: DictConfig, run_dir: str | Path) -> list[Callback]:
    ccfg = cfg.callbacks
    folder = checkpoint_dir(run_dir)
    best = BestCheckpoint(
        dirpath=folder,
        filename=BEST_FILENAME,
        monitor=ccfg.checkpoint.monitor,
        mode=ccfg.checkpoint.mode,
        save_top_k=ccfg.checkpoint.save_top_k,
        save_last=False,  # LastCheckpoint alone writes last.ckpt (after this one: it sees the best)
        auto_insert_metric_name=False,
        # A resumed run that validates a step again writes the same best file, not a "-v1" copy
        # beside the one an interrupted run left (each name holds its step: never two bests).
        enable_version_counter=False,
    )
    callbacks: list[Callback] = [best, LastCheckpoint(folder, ccfg.checkpoint.every_n_train_steps)]
    # Ctrl-C, SIGTERM or a crash once a batch trained writes on_exception.ckpt; ckpt_path=last
    # picks the newest checkpoint.
    callbacks.append(ExceptionCheckpoint(dirpath=folder))
    callbacks.append(DivergenceGuard())  # stops at a NaN/inf loss; warns about loss spikes
    if ccfg.lr_monitor:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if cfg.trainer.enable_progress_bar:
        drawn = is_terminal(sys.stdout)  # Lightning's bar writes to stdout
        callbacks.append(TQDMProgressBar(refresh_rate=1) if drawn else LineProgress())
    callbacks.append(OneLineSummary())
    samples = ccfg.samples
    if samples.every_n_steps:
        callbacks.append(
            SamplesCallback(
                run_dir,
                samples.every_n_steps,
                sample_prompts(cfg),
                samples.duration,
                samples.guidance_scale,
                samples.seed,
            )
        )
    evaluation = ccfg.get("evaluation")
    if evaluation and evaluation.every_n_epochs:
        from musicgen_train.evaluation.callback import EvaluationCallback

        callbacks.append(
            EvaluationCallback(cfg, run_dir, evaluation.every_n_epochs, evaluation.max_prompts)
        )
    return callbacks


def remove_untracked_best(callbacks: list[Callback]) -> list[Path]:
    """Delete ``best-*.ckpt`` files the best-checkpoint callback does not keep: a kill between
    saving a new best and deleting the old one (or before last.ckpt recorded it) leaves one
    that the resumed run's callback never heard of."""
    removed = []
    for callback in callbacks:
        if not isinstance(callback, ModelCheckpoint) or not callback.dirpath:
            continue
        kept = {Path(p).resolve() for p in callback.best_k_models} | (
            {Path(callback.best_model_path).resolve()} if callback.best_model_path else set()
        )
        prefix = BEST_FILENAME.split("{", 1)[0]
        for path in Path(callback.dirpath).glob(f"{prefix}*.ckpt"):
            if kept and path.resolve() not in kept:
                path.unlink(missing_ok=True)
                removed.append(path)
    if removed:
        log.info("removed %d best checkpoint(s) left by an interrupted run", len(removed))
    return removed


def best_checkpoint(callbacks: list[Callback]) -> Path | None:
    for callback in callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.best_model_path:
            return Path(callback.best_model_path)
    return None
