"""Checks of the ``eval`` config group, run when the config is composed."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from musicgen_train.config import check_choice, check_range
from musicgen_train.errors import ConfigError
from musicgen_train.evaluation.embedders import EMBEDDERS


def validate(cfg: DictConfig) -> None:
    if "eval" not in cfg or not cfg.eval:
        return
    embedders = OmegaConf.select(cfg, "eval.embedders")
    if not OmegaConf.is_list(embedders) and not isinstance(embedders, list):
        raise ConfigError(
            f"eval.embedders={embedders!r} is not allowed: give a list of {list(EMBEDDERS)}"
        )
    for name in embedders:
        if name not in EMBEDDERS:
            raise ConfigError(
                f"eval.embedders contains {name!r}: choose each from {list(EMBEDDERS)}"
            )
    check_range(cfg, "eval.samples_per_prompt", 1)
    check_range(cfg, "eval.max_prompts", 1, allow_none=True)
    check_range(cfg, "eval.reference_max_clips", 1, allow_none=True)
    check_range(cfg, "eval.generation.duration", 0.1, 600)
    check_range(cfg, "eval.generation.guidance_scale", 0)
    check_range(cfg, "eval.generation.temperature", 0.01)
    check_range(cfg, "eval.generation.batch_size", 1)
    check_range(cfg, "eval.bootstrap.samples", 0)
    check_range(cfg, "eval.bootstrap.confidence", 0.5, 0.999)
    check_range(cfg, "eval.fad_inf.min_frames", 2)
    check_range(cfg, "eval.fad_inf.steps", 2)
    check_choice(cfg, "eval.fad_inf.sampling", ["without_replacement", "fadtk"])
    check_range(cfg, "eval.fad_inf.reliable_frames", 2)
    check_range(cfg, "eval.kad.max_reference_frames", 2, allow_none=True)
    check_range(cfg, "eval.outliers", 0)
    check_range(cfg, "eval.protocol.cut_seconds", 0.1, allow_none=True)
    check_range(cfg, "eval.protocol.loudness_lufs", -70, 0, allow_none=True)
    check_range(cfg, "eval.text_adherence.max_clips", 2, allow_none=True)
    check_range(cfg, "eval.text_adherence.max_frames", 1, allow_none=True)
    check_range(cfg, "eval.text_adherence.batch_size", 2)
    check_range(cfg, "eval.clap.window_seconds", 1, 10)
    check_choice(cfg, "eval.clap.windowing", ["consecutive", "fadtk"])
    check_range(cfg, "eval.report_spectrograms", 0)
    for key in ("eval.melody", "eval.audio_prompt"):  # absent from older eval configs: auto
        if OmegaConf.select(cfg, key) is not None:
            check_choice(cfg, key, ["auto", "prompts", "reference", "none"])
    check_range(cfg, "eval.audio_prompt_seconds", 0.02, allow_none=True)
    for key in (
        "eval.clap_score",
        "eval.after_training",
        "eval.cache",
        "eval.fad_inf.enabled",
        "eval.kad.enabled",
    ):
        check_choice(cfg, key, [True, False])
