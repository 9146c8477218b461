"""Checks of the training sections (finetune, optim, trainer, callbacks) at composition time.

Each failure is a ConfigError naming the key, the value and what is allowed. Strategy and
logger sections are checked by their own modules (strategy.py, loggers.py).
"""

from __future__ import annotations

from omegaconf import DictConfig, ListConfig, OmegaConf

from musicgen_train.config import check_choice, check_range
from musicgen_train.errors import ConfigError
from musicgen_train.model.lora_targets import ALLOWED_TARGETS
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
        if not isinstance(OmegaConf.select(cfg, "finetune.lora"), DictConfig):
            raise ConfigError(
                "finetune.lora is missing: finetune=lora needs r, alpha, dropout, target_modules"
            )
        check_range(cfg, "finetune.lora.r", 1, integer=True)
        check_range(cfg, "finetune.lora.alpha", 0)
        check_range(cfg, "finetune.lora.dropout", 0.0, 1.0)
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


def validate_optim(cfg: DictConfig) -> None:
    check_choice(cfg, "optim.name", ("adamw",))
    check_range(cfg, "optim.lr", 0.0, 1.0)
    check_range(cfg, "optim.weight_decay", 0.0)
    check_range(cfg, "optim.eps", 0.0)
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
    if cfg.trainer.devices != "auto":
        check_range(cfg, f"{t}.devices", 1, integer=True)
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
    check_range(cfg, f"{t}.limit_val_batches", 0.0)
    check_range(cfg, f"{t}.num_sanity_val_steps", -1, integer=True)
    check_range(cfg, f"{t}.log_every_n_steps", 1, integer=True)
    for key in ("deterministic", "enable_progress_bar", "val_before_training"):
        check_choice(cfg, f"{t}.{key}", BOOLEANS)
    check_choice(cfg, f"{t}.benchmark", (True, False, None))


def validate_callbacks(cfg: DictConfig) -> None:
    c = "callbacks"
    check_choice(cfg, f"{c}.checkpoint.mode", ("min", "max"))
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
