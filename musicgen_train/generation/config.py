"""Validate the ``generation`` config section, and hand it to every stage that generates.

``export_defaults(cfg)`` puts ``generation.precision`` / ``threads`` / ``cuda_graphs`` into the
environment (``MUSICGEN_GENERATION_*``), where ``GenerationEngine`` reads its defaults: the CLI
calls it once, so evaluate, the training samples callback, the service (and its generation
processes) and the pyfunc model all generate as the config says without passing it along.
"""

from __future__ import annotations

import os

from omegaconf import DictConfig, OmegaConf

from musicgen_train.errors import ConfigError
from musicgen_train.generation.precision import PRECISIONS

ENV_PRECISION = "MUSICGEN_GENERATION_PRECISION"
ENV_THREADS = "MUSICGEN_GENERATION_THREADS"
ENV_CUDA_GRAPHS = "MUSICGEN_GENERATION_CUDA_GRAPHS"
ENV_WINDOW = "MUSICGEN_GENERATION_WINDOW_SECONDS"
ENV_STRIDE = "MUSICGEN_GENERATION_EXTEND_STRIDE"
CLIP_FORMATS = ("wav", "flac", "ogg", "mp3")  # what `generate` writes (libsndfile)


def validate(cfg: DictConfig) -> None:
    if "generation" not in cfg:
        return
    gen = cfg.generation
    precision = OmegaConf.select(gen, "precision")
    if precision not in PRECISIONS:
        raise ConfigError(
            f"generation.precision={precision!r} is not allowed: choose one of {list(PRECISIONS)}"
        )
    threads = OmegaConf.select(gen, "threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)):
        raise ConfigError(f"generation.threads={threads!r} is not allowed: null or an integer >= 1")
    if threads is not None and threads < 1:
        raise ConfigError(f"generation.threads={threads!r} is not allowed: null or an integer >= 1")
    if not isinstance(OmegaConf.select(gen, "cuda_graphs", default=False), bool):
        raise ConfigError("generation.cuda_graphs must be true or false")
    duration = OmegaConf.select(gen, "duration")
    if isinstance(duration, bool) or not isinstance(duration, int | float) or not duration > 0:
        raise ConfigError(f"duration={duration!r} is not allowed: a number of seconds above 0")
    window = OmegaConf.select(gen, "window_seconds", default=30.0)
    stride = OmegaConf.select(gen, "extend_stride", default=18.0)
    for key, value in (("window_seconds", window), ("extend_stride", stride)):
        finite = isinstance(value, int | float) and 0 < value < float("inf")  # nan fails too
        if isinstance(value, bool) or not finite:
            raise ConfigError(f"generation.{key}={value!r} is not allowed: seconds above 0")
    if stride >= window:
        raise ConfigError(
            f"generation.extend_stride={stride!r} must be below "
            f"generation.window_seconds={window!r}"
        )
    batch = OmegaConf.select(gen, "batch_size", default=1)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"generation.batch_size={batch!r} is not allowed: an integer >= 1")
    fmt = OmegaConf.select(gen, "format")
    if fmt is not None and fmt not in CLIP_FORMATS:
        raise ConfigError(
            f"generation.format={fmt!r} is not allowed: null or one of {list(CLIP_FORMATS)}"
        )
    for key in ("prompt", "prompts", "output", "audio_prompt"):
        value = OmegaConf.select(gen, key)
        if value is not None and not isinstance(value, str | int | float):
            raise ConfigError(f"{key}={value!r} is not allowed: give text")


def export_defaults(cfg: DictConfig) -> None:
    """Make the config's generation settings this process's (and its children's) defaults."""
    if "generation" not in cfg:
        return
    os.environ[ENV_PRECISION] = str(cfg.generation.precision)
    if cfg.generation.get("threads") is not None:
        os.environ[ENV_THREADS] = str(int(cfg.generation.threads))
    else:
        os.environ.pop(ENV_THREADS, None)
    os.environ[ENV_CUDA_GRAPHS] = "1" if cfg.generation.get("cuda_graphs") else "0"
    os.environ[ENV_WINDOW] = str(float(cfg.generation.get("window_seconds", 30.0)))
    os.environ[ENV_STRIDE] = str(float(cfg.generation.get("extend_stride", 18.0)))


def env_precision(default: str | None = "fp32") -> str | None:
    return os.environ.get(ENV_PRECISION) or default


def env_threads() -> int | None:
    value = os.environ.get(ENV_THREADS)
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{ENV_THREADS}={value!r} is not an integer") from None


def env_cuda_graphs() -> bool:
    return os.environ.get(ENV_CUDA_GRAPHS, "0") in ("1", "true", "yes")


def _env_seconds(name: str, default: float) -> float:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return float(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a number of seconds") from None


def env_window_seconds(default: float = 30.0) -> float:
    return _env_seconds(ENV_WINDOW, default)


def env_extend_stride(default: float = 18.0) -> float:
    return _env_seconds(ENV_STRIDE, default)
