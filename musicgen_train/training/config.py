"""Checks of the training sections (finetune, optim, trainer, callbacks) at composition time.

Each failure is a ConfigError naming the key, the value and what is allowed. Strategy and
logger sections are checked by their own modules (strategy.py, loggers.py).
"""

from __future__ import annotations

import re

from omegaconf import DictConfig, ListConfig, OmegaConf

from musicgen_train.config import check_choice, check_range
from musicgen_train.errors import ConfigError
from musicgen_train.model.lora_targets import ALLOWED_TARGETS, OUTSIDE_DECODER
from musicgen_train.training.logger_config import validate_logger
from musicgen_train.training.strategy_config import validate_strategy

FINETUNE_MODES = ("full", "lora")
SCHEDULERS = ("cosine", "constant")
# Lightning's names; Hydra turns `trainer.precision=32` into the integer 32, so both spellings.
PRECISIONS = (
    "auto",
    "32",
    32,
    "32-true",
    "bf16-mixed",
    "16-mixed",
    16,
    "bf16-true",
    "64",
    64,
    "64-true",
)
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
BOOLEANS = (True, False)


def validate(cfg: DictConfig) -> None:
    for section in ("finetune", "optim", "trainer", "callbacks"):
        if not isinstance(cfg.get(section), DictConfig):
            raise ConfigError(f"{section} is missing: the config tree needs a {section} group")
    validate_finetune(cfg)
    validate_optim(cfg)
    validate_trainer(cfg)
    validate_callbacks(cfg)
    if cfg.get("ckpt_path") is not None and not isinstance(cfg.ckpt_path, str):
        raise ConfigError(
            f"ckpt_path={cfg.ckpt_path!r} is not allowed: last, best or a checkpoint file path"
        )
    validate_strategy(cfg)
    validate_logger(cfg)


def validate_finetune(cfg: DictConfig) -> None:
    check_choice(cfg, "finetune.name", FINETUNE_MODES)
    check_range(cfg, "finetune.cfg_dropout", 0.0, 1.0)
    if OmegaConf.select(cfg, "finetune.chroma_dropout") is not None:
        check_range(cfg, "finetune.chroma_dropout", 0.0, 1.0)
    check_range(cfg, "finetune.max_text_tokens", 1, integer=True)
    check_choice(cfg, "finetune.gradient_checkpointing", BOOLEANS)
    decay = OmegaConf.select(cfg, "finetune.ema.decay")
    if decay is not None and decay != 0:
        check_range(cfg, "finetune.ema.decay", 0.0, 0.999999)
        if not 0 < decay < 1:
            raise ConfigError(f"finetune.ema.decay={decay!r} is not allowed: 0 (off) or in (0, 1)")
    if cfg.finetune.name == "lora":
        validate_lora(cfg)


def validate_lora(cfg: DictConfig) -> None:
    if not isinstance(OmegaConf.select(cfg, "finetune.lora"), DictConfig):
        raise ConfigError(
            "finetune.lora is missing: finetune=lora needs r, alpha, dropout, target_modules"
        )
    check_range(cfg, "finetune.lora.r", 1, integer=True)
    # peft scales every adapter by alpha / r: at 0 the adapters add nothing and get no gradient,
    # so a run would train nothing at all; a dropout of 1 zeroes every adapter input likewise.
    check_range(cfg, "finetune.lora.alpha", 0)
    alpha, dropout = cfg.finetune.lora.alpha, cfg.finetune.lora.dropout
    if alpha == 0:
        raise ConfigError(
            "finetune.lora.alpha=0 is not allowed: it must be > 0 (adapters are scaled by "
            "alpha / r, so 0 trains nothing; alpha = r, e.g. 16, is the usual choice)"
        )
    check_range(cfg, "finetune.lora.dropout", 0.0, 1.0)
    if dropout == 1:
        raise ConfigError(
            "finetune.lora.dropout=1 is not allowed: it must be below 1 (1 drops every input "
            "of the adapters, which then learn nothing; 0.05 is the default)"
        )
    targets = OmegaConf.select(cfg, "finetune.lora.target_modules")
    if not isinstance(targets, ListConfig) or not targets:
        raise ConfigError(
            f"finetune.lora.target_modules={targets!r} is not allowed: give a non-empty "
            f"list drawn from {list(ALLOWED_TARGETS)}"
        )
    for target in targets:
        if target not in ALLOWED_TARGETS:
            raise ConfigError(
                f"finetune.lora.target_modules has {target!r}, which is not allowed: choose "
                f"from {list(ALLOWED_TARGETS)}"
            )
    if all(target in OUTSIDE_DECODER for target in targets):
        inside = [t for t in ALLOWED_TARGETS if t not in OUTSIDE_DECODER]
        raise ConfigError(
            f"finetune.lora.target_modules={list(targets)} puts no adapter in the decoder "
            f"({', '.join(OUTSIDE_DECODER)} trains fully, without one): add at least one of "
            f"{inside}"
        )


def validate_optim(cfg: DictConfig) -> None:
    check_choice(cfg, "optim.name", ("adamw",))
    check_range(cfg, "optim.lr", 0.0, 1.0)
    check_range(cfg, "optim.weight_decay", 0.0)
    check_range(cfg, "optim.eps", 0.0)
    if cfg.optim.eps == 0:
        # AdamW divides by sqrt(v) + eps: a weight whose gradient has been 0 so far (the
        # embedding of a code no batch held) becomes 0/0 = NaN at the first step.
        raise ConfigError(
            "optim.eps=0 is not allowed: it must be > 0 (AdamW divides by it where a gradient "
            "is 0, which makes those weights NaN); 1e-8 is the default"
        )
    betas = cfg.optim.betas
    if not (isinstance(betas, ListConfig) and len(betas) == 2 and all(0 <= b < 1 for b in betas)):
        shown = OmegaConf.to_container(betas) if isinstance(betas, ListConfig) else betas
        raise ConfigError(
            f"optim.betas={shown!r} is not allowed: two numbers in [0, 1), e.g. [0.9, 0.95]"
        )
    check_choice(cfg, "optim.scheduler", SCHEDULERS)
    check_range(cfg, "optim.warmup_steps", 0, integer=True)
    check_range(cfg, "optim.min_lr_ratio", 0.0, 1.0)


def validate_trainer(cfg: DictConfig) -> None:
    t = "trainer"
    check_choice(cfg, f"{t}.precision", PRECISIONS)
    check_choice(cfg, f"{t}.accelerator", ACCELERATORS)
    validate_devices(cfg.trainer.devices)
    check_range(cfg, f"{t}.num_nodes", 1, integer=True)
    if cfg.trainer.max_steps != -1:
        check_range(cfg, f"{t}.max_steps", 1, integer=True)
    elif not isinstance(cfg.trainer.max_epochs, int) or cfg.trainer.max_epochs < 1:
        raise ConfigError(
            f"trainer.max_steps=-1 (no step limit) needs trainer.max_epochs set to a number >= 1, "
            f"not {cfg.trainer.max_epochs!r}: otherwise training never ends"
        )
    check_range(cfg, f"{t}.max_epochs", -1, allow_none=True, integer=True)
    check_range(cfg, f"{t}.accumulate_grad_batches", 1, integer=True)
    check_range(cfg, f"{t}.gradient_clip_val", 0.0, allow_none=True)
    interval = cfg.trainer.val_check_interval
    if isinstance(interval, float) and not 0 < interval <= 1:
        raise ConfigError(
            f"trainer.val_check_interval={interval!r} is not allowed: a fraction of an epoch "
            "in (0, 1] or an integer number of training batches"
        )
    check_range(cfg, f"{t}.val_check_interval", 0.0)
    check_range(cfg, f"{t}.check_val_every_n_epoch", 1, allow_none=True, integer=True)
    limit = cfg.trainer.limit_val_batches
    if isinstance(limit, float) and not 0 <= limit <= 1:
        raise ConfigError(
            f"trainer.limit_val_batches={limit!r} is not allowed: a fraction of the validation "
            "set in [0, 1] (0 = no validation) or an integer number of batches"
        )
    check_range(cfg, f"{t}.limit_val_batches", 0.0)
    check_range(cfg, f"{t}.num_sanity_val_steps", -1, integer=True)
    check_range(cfg, f"{t}.log_every_n_steps", 1, integer=True)
    for key in ("deterministic", "enable_progress_bar", "val_before_training"):
        check_choice(cfg, f"{t}.{key}", BOOLEANS)
    check_choice(cfg, f"{t}.benchmark", (True, False, None))


def validate_devices(devices) -> None:
    """Lightning's spellings: a count, -1 (every GPU), auto, or a list of GPU indices. Whether
    the machine has them is checked when training starts (``training/devices.py``)."""
    if not _lightning_devices(devices):
        shown = OmegaConf.to_container(devices) if isinstance(devices, ListConfig) else devices
        raise ConfigError(
            f"trainer.devices={shown!r} is not allowed: a number of devices >= 1, -1 or auto "
            "(all GPUs), or a list of distinct GPU indices such as [0, 2]"
        )


def _lightning_devices(devices) -> bool:
    def whole(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if isinstance(devices, ListConfig):
        indices = OmegaConf.to_container(devices)
        distinct = len(set(map(str, indices))) == len(indices)
        return bool(indices) and distinct and all(whole(i) and i >= 0 for i in indices)
    return devices in ("auto", -1) or (whole(devices) and devices >= 1)


def validate_callbacks(cfg: DictConfig) -> None:
    c = "callbacks"
    check_choice(cfg, f"{c}.checkpoint.mode", ("min", "max"))
    validate_monitor(cfg.callbacks.checkpoint.monitor, cfg.callbacks.checkpoint.mode)
    check_range(cfg, f"{c}.checkpoint.save_top_k", -1, integer=True)
    check_range(cfg, f"{c}.checkpoint.every_n_train_steps", 1, allow_none=True, integer=True)
    check_choice(cfg, f"{c}.lr_monitor", BOOLEANS)
    check_range(cfg, f"{c}.samples.every_n_steps", 0, integer=True)
    if cfg.callbacks.samples.every_n_steps:
        prompts = cfg.callbacks.samples.prompts
        if not isinstance(prompts, ListConfig) or not all(isinstance(p, str) for p in prompts):
            raise ConfigError(
                f"{c}.samples.prompts={prompts!r} is not allowed: a list of prompts "
                "(empty: the first two held-out captions)"
            )
        check_range(cfg, f"{c}.samples.duration", 0.1)
        check_range(cfg, f"{c}.samples.guidance_scale", 1.0)


# What the LightningModule logs (module.py), so what the best checkpoint can be chosen by;
# Lightning would stop at the first validation, with a traceback, for any other name.
MONITORABLE = re.compile(r"(val|train)/(ce|ppl|ce_q\d+)|val/(ce_shuffled|ce_null|caption_gain)")
HIGHER_IS_BETTER = ("val/caption_gain",)  # shuffled-caption loss minus true-caption loss


def validate_monitor(monitor, mode: str) -> None:
    if not isinstance(monitor, str) or not MONITORABLE.fullmatch(monitor):
        raise ConfigError(
            f"callbacks.checkpoint.monitor={monitor!r} is not allowed: choose a logged metric: "
            "val/ce (the default), val/ppl, val/ce_q<k>, val/ce_null, val/ce_shuffled, "
            "val/caption_gain, or train/ce, train/ppl, train/ce_q<k>"
        )
    if (monitor in HIGHER_IS_BETTER) != (mode == "max"):
        better = "max" if monitor in HIGHER_IS_BETTER else "min"
        raise ConfigError(
            f"callbacks.checkpoint.mode={mode} keeps the worst checkpoint by {monitor}, which "
            f"{'grows' if better == 'max' else 'falls'} as the model improves: set "
            f"callbacks.checkpoint.mode={better}"
        )
