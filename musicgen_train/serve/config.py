"""Validate the ``serve`` config group when the config is composed."""

from __future__ import annotations

from omegaconf import DictConfig

from musicgen_train.serve.settings import ServeSettings


def validate(cfg: DictConfig) -> None:
    if "serve" in cfg:
        ServeSettings.from_config(cfg)
