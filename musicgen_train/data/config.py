"""Checks of the ``data`` section (processing, token cache, DataModule), run when a config is
composed so that a bad value fails at once with the key, the value and what is allowed."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from musicgen_train.config import check_choice, check_range
from musicgen_train.errors import ConfigError


def validate(cfg: DictConfig) -> None:
    if OmegaConf.select(cfg, "data") is None:
        return
    from musicgen_train.data.captions import validate_caption_config
    from musicgen_train.data.sources import validate_source_config

    validate_source_config(cfg)  # data.source, data.demo_seed, data.hf.* (sources.py)
    validate_caption_config(cfg)  # data.caption.* (captions.py)
    for key, allow_none in (
        ("data.segment_seconds", False),
        ("data.hop_seconds", True),
        ("data.crop_seconds", True),
    ):
        _check_positive(cfg, key, allow_none=allow_none)
    for key, low, high, allow_none in (
        ("data.min_segment_ratio", 0.0, 1.0, False),
        ("data.min_duration", 0.0, None, False),
        ("data.silence_db", None, 0.0, False),
        ("data.valid_fraction", 0.0, 0.99, False),
        ("data.encode_batch_size", 1, None, False),
        ("data.shard_size", 1, None, False),
        ("data.batch_size", 1, None, False),
        ("data.num_workers", 0, None, False),
        ("data.encode_threads", 1, None, True),
    ):
        if OmegaConf.select(cfg, key, default="<unset>") != "<unset>":
            check_range(
                cfg, key, low if low is not None else float("-inf"), high, allow_none=allow_none
            )
    whole = ("encode_batch_size", "shard_size", "batch_size", "num_workers", "encode_threads")
    for key in (f"data.{name}" for name in whole):
        value = OmegaConf.select(cfg, key)
        if value is not None and not isinstance(value, int):
            raise ConfigError(f"{key}={value!r} is not allowed: it must be a whole number")
    if OmegaConf.select(cfg, "data.channels") is not None:
        check_choice(cfg, "data.channels", [1, 2])
    stratify_by = OmegaConf.select(cfg, "data.stratify_by")
    if stratify_by is not None and not (isinstance(stratify_by, str) and stratify_by.strip()):
        raise ConfigError(
            f"data.stratify_by={stratify_by!r} is not allowed: give a caption field such as "
            "genre, or null"
        )
    if OmegaConf.select(cfg, "data.output") in ("", None):
        raise ConfigError("data.output is empty: give the folder of the token cache")
    hop, segment = OmegaConf.select(cfg, "data.hop_seconds"), cfg.data.get("segment_seconds")
    if hop is not None and segment is not None and hop > segment:
        raise ConfigError(
            f"data.hop_seconds={hop} is not allowed: it must be <= data.segment_seconds={segment} "
            "(a larger hop would leave audio out between windows)"
        )


def _check_positive(cfg: DictConfig, key: str, *, allow_none: bool) -> None:
    value = OmegaConf.select(cfg, key, default="<unset>")
    if value == "<unset>" or (value is None and allow_none):
        return
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        extra = " or null" if allow_none else ""
        raise ConfigError(f"{key}={value!r} is not allowed: it must be a number > 0{extra}")
