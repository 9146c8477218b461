"""What training does when its numbers go wrong: a loss, gradient or weight that is not finite.

A NaN or inf loss is caught before its backward and a non-finite gradient norm before its
optimizer step, so the weights in memory (and every checkpoint) stay those of the last good
step; training stops with one line naming the step and the likely causes. Left alone, a NaN
reached AdamW's moments and every weight, the run went on to its last step, a ``val_ce=nan``
checkpoint could be kept as the best, and ``python train.py`` exported it.

Under fp16 autocast (``16-mixed``) Lightning's GradScaler skips a step whose gradients overflow
and lowers its scale: that is how fp16 training works. There a non-finite loss is let through
(the scaler skips that step) until it happens ``FP16_PATIENCE`` times in a row, and training
stops when the scale falls below ``MIN_LOSS_SCALE`` (fairseq's floor: gradients that overflow at
every step).
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import deque
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from musicgen_train.errors import UserError

log = logging.getLogger(__name__)

FP16_PATIENCE = 3  # non-finite losses in a row under 16-mixed (the scaler skips each step)
MIN_LOSS_SCALE = 1e-4
SPIKE_WINDOW = 50  # steps whose median a new loss is compared with
SPIKE_FACTOR = 1.5  # a loss above this many times that median is a spike
SPIKE_MIN_HISTORY = 1  # the first step after a good one counts too: divergence is fast


class TrainingDiverged(UserError):
    """A loss, gradient or weight that is not a finite number: training cannot go on."""


def skips_overflowing_steps(trainer) -> bool:
    """fp16 training: a loss scaler (Lightning's GradScaler, DeepSpeed's own) skips the steps
    whose gradients overflow. fp32 and bf16 have none: every step is applied."""
    return str(trainer.precision).startswith("16")


class DivergenceGuard(Callback):
    """Checks every training loss before its backward; warns about loss spikes."""

    def __init__(self):
        self.bad_in_a_row = 0
        self.recent: deque[float] = deque(maxlen=SPIKE_WINDOW)
        self.spikes = 0
        self._warned_at: int | None = None

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        # Lightning divides the loss by accumulate_grad_batches before backward: undo it, so
        # what is compared and said is train/ce.
        value = float(loss.detach()) * trainer.accumulate_grad_batches
        # Every process decides alike (one collective), so all of them stop at the same step.
        if trainer.strategy.reduce_boolean_decision(not math.isfinite(value), all=False):
            self._non_finite(trainer, pl_module, value)
            return
        self.bad_in_a_row = 0
        self._watch_for_spike(trainer, pl_module, value)

    def _non_finite(self, trainer, pl_module, value: float) -> None:
        self.bad_in_a_row += 1
        shown = value if not math.isfinite(value) else "not finite on another process"
        if not skips_overflowing_steps(trainer) or self.bad_in_a_row >= FP16_PATIENCE:
            raise TrainingDiverged(
                diverged_message(trainer, pl_module, f"the training loss (train/ce) is {shown}")
            )
        if trainer.is_global_zero:
            log.warning(
                "step %d: the training loss is %s under fp16; the GradScaler skips this step "
                "(training stops at %d in a row)",
                trainer.global_step,
                shown,
                FP16_PATIENCE,
            )

    def _watch_for_spike(self, trainer, pl_module, value: float) -> None:
        if len(self.recent) >= SPIKE_MIN_HISTORY:
            median = statistics.median(self.recent)
            if value > SPIKE_FACTOR * median:
                self.spikes += 1
                self._say_spike(trainer, pl_module, value, median)
        self.recent.append(value)
        if self.spikes:  # a counter on the dashboards once there is something to count
            pl_module.log("train/loss_spikes", float(self.spikes), on_step=True, on_epoch=False)

    def _say_spike(self, trainer, pl_module, value: float, median: float) -> None:
        step = trainer.global_step
        # One line per window of steps at most: a run that spikes often says so, not 50 times.
        if self._warned_at is not None and step - self._warned_at < SPIKE_WINDOW:
            return
        self._warned_at = step
        if trainer.is_global_zero:
            log.warning(
                "step %d: loss spike: train/ce %.3f is %.1fx the median of the %d step(s) before "
                "(%.3f); %d so far (train/loss_spikes). If they repeat, lower optim.lr=%g%s",
                step,
                value,
                value / median,
                len(self.recent),
                median,
                self.spikes,
                pl_module.cfg.optim.lr,
                "" if trainer.gradient_clip_val else " and set trainer.gradient_clip_val=1.0",
            )


def clip_gradients(module, optimizer, clip_val, algorithm) -> torch.Tensor | None:
    """Clip as ``trainer.gradient_clip_val`` asks and return the global gradient norm before
    clipping (which clipping computes anyway), or None where this process does not hold the
    gradients (DeepSpeed clips inside its engine)."""
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

    strategy = module.trainer.strategy
    if isinstance(strategy, DeepSpeedStrategy) or str(algorithm) == "value":
        module.clip_gradients(optimizer, clip_val, algorithm)  # Lightning's own
        return None
    if isinstance(strategy, FSDPStrategy):
        # Lightning refuses norm clipping under FSDP ("not supported"), so strategy=fsdp
        # stopped at its first step with the default trainer.gradient_clip_val=1.0; the root
        # FSDP module (Lightning wraps the whole LightningModule) combines the shards' norms.
        return strategy.model.clip_grad_norm_(clip_val or math.inf)
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if clip_val:
        return torch.nn.utils.clip_grad_norm_(params, clip_val)
    norms = [torch.linalg.vector_norm(p.grad.detach(), dtype=torch.float32) for p in params]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())


def check_gradients(trainer, pl_module, norm: torch.Tensor) -> None:
    """Stop before an optimizer step would put a non-finite gradient into the weights."""
    if skips_overflowing_steps(trainer):  # the loss scaler skips an overflowing step itself
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        scale = scaler.get_scale() if scaler is not None and scaler.is_enabled() else math.inf
        if scale < MIN_LOSS_SCALE:
            what = f"the fp16 loss scale fell to {scale:g}: the gradients overflow at every step"
            raise TrainingDiverged(diverged_message(trainer, pl_module, what))
        return
    if not bool(torch.isfinite(norm)):
        what = f"the gradient norm (train/grad_norm) is {float(norm)}"
        raise TrainingDiverged(diverged_message(trainer, pl_module, what))


def check_finite_weights(state_dict: dict, trainer, pl_module) -> None:
    """Refuse to write a checkpoint whose weights are not finite (one sync for all of them):
    a NaN can reach weights that the loss does not see yet, such as the embedding of a code
    that no batch has held."""
    names = [k for k, v in state_dict.items() if torch.is_tensor(v) and v.is_floating_point()]
    bad = []
    if names:
        device = state_dict[names[0]].device
        finite = torch.stack([torch.isfinite(state_dict[k]).all().to(device) for k in names])
        if not bool(finite.all()):
            bad = [name for name, ok in zip(names, finite.tolist(), strict=True) if not ok]
    # Every process decides alike: under FSDP only the first one holds the gathered weights.
    if not trainer.strategy.reduce_boolean_decision(bool(bad), all=False):
        return
    shown = f"{len(bad)} weight tensor(s) are not finite ({', '.join(bad[:3])})"
    what = shown if bad else "weights on another process are not finite"
    kept = "so its checkpoint was not written"
    raise TrainingDiverged(diverged_message(trainer, pl_module, what, kept=kept))


def diverged_message(
    trainer, pl_module, what: str, kept: str = "so it stopped before the weights took it in"
) -> str:
    """One line: the step, what is not finite, the likely causes in this run's settings, and
    the checkpoints to go on from."""
    causes = [
        f"a learning rate too high (optim.lr={pl_module.cfg.optim.lr:g}: try 3-10x lower, "
        "or a longer optim.warmup_steps)"
    ]
    if str(trainer.precision).startswith("16"):
        causes.append("fp16 overflow (trainer.precision=16-mixed: use bf16-mixed on a GPU with it)")
    if not trainer.gradient_clip_val:
        causes.append("no gradient clipping (set trainer.gradient_clip_val=1.0, audiocraft's)")
    return (
        f"training diverged at step {trainer.global_step}: {what}, {kept}. Likely causes: "
        f"{'; '.join(causes)}. {resume_advice(trainer)}"
    )


def resume_advice(trainer) -> str:
    best = last = None
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint):
            best = best or (callback.monitor and callback.best_model_path)
            last = last or callback.last_model_path
    choices = [
        f"ckpt_path={kind} ({Path(path).name})"
        for kind, path in (("best", best), ("last", last))
        if path
    ]
    if not choices:
        return "No checkpoint was saved before it: start again with the change."
    return f"Go on from a checkpoint before it, with the change: {' or '.join(choices)}."
