"""Validate the ``registry.*``, ``export.*`` and ``checkpoint`` keys when the config is composed."""

from __future__ import annotations

import re

from omegaconf import DictConfig, OmegaConf

from musicgen_train.config import check_choice, check_range
from musicgen_train.errors import ConfigError

# MLflow accepts more, but these names also work as folder names and inside models:/ URIs; the
# length leaves room in a file name (255 bytes) for the hidden staging folder export writes.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
ALIAS = re.compile(r"^[A-Za-z0-9_-]+$")


def _check_pattern(cfg: DictConfig, key: str, pattern: re.Pattern, what: str) -> None:
    value = OmegaConf.select(cfg, key)
    if value is not None and not (isinstance(value, str) and pattern.match(value)):
        raise ConfigError(f"{key}={value!r} is not allowed: {what}")


def _check_alias(cfg: DictConfig, key: str) -> None:
    _check_pattern(cfg, key, ALIAS, "an alias holds letters, digits, '_' and '-'")
    value = OmegaConf.select(cfg, key)
    # MLflow reserves these: models:/name/latest and models:/name@v3 mean versions.
    if value is not None and (value == "latest" or re.fullmatch(r"[vV]\d+", value)):
        raise ConfigError(f"{key}={value!r} is not allowed: 'latest' and v<number> are reserved")


def validate(cfg: DictConfig) -> None:
    if "registry" not in cfg:
        return
    _check_pattern(
        cfg,
        "registry.name",
        NAME,
        "a registered model name starts with a letter or digit and holds letters, digits, . _ - "
        "(at most 200)",
    )
    _check_alias(cfg, "registry.alias")
    _check_alias(cfg, "registry.from_alias")
    check_range(cfg, "registry.version", 1, allow_none=True)
    check_choice(cfg, "registry.register_after_training", [True, False])
    check_choice(cfg, "export.merge_lora", [True, False])
    check_choice(cfg, "export.use_ema", [True, False])
    check_choice(cfg, "export.new_version", [True, False])
    check_range(cfg, "export.generation.duration", 0.1, 600)
    check_range(cfg, "export.generation.guidance_scale", 0, 100)
    check_range(cfg, "export.generation.temperature", 0.01, 100)
    check_range(cfg, "export.generation.top_k", 0)
    check_range(cfg, "export.generation.top_p", 0, 1)
    checkpoint = OmegaConf.select(cfg, "checkpoint")
    if checkpoint is not None and not (isinstance(checkpoint, str) and checkpoint.strip()):
        raise ConfigError(
            f"checkpoint={checkpoint!r} is not allowed: give best, last, or a checkpoint path"
        )
