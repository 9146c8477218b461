"""``python train.py``: prepare (if needed) -> train -> evaluate -> export, one recipe end to end."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict:
    """Run every stage the recipe asks for and return where each result went."""
    from musicgen_train.data.prepare import ensure_token_cache
    from musicgen_train.training.train import train

    outputs: dict = {"token_cache": str(ensure_token_cache(cfg))}
    trained = train(cfg)
    outputs.update(trained.summary())
    _print_summary(outputs)
    return outputs


def _print_summary(outputs: dict) -> None:
    log.info("done. Everything this run wrote:")
    for key, value in outputs.items():
        log.info("  %-16s %s", key, value)
