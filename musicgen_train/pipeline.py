"""``python train.py``: prepare (if needed) -> train -> evaluate -> export, for one recipe."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict:
    """Run every stage the recipe asks for and return where each result went."""
    from musicgen_train.training.train import is_main_process, train

    trained = train(cfg)  # prepares the token cache first when it is missing or incomplete
    outputs: dict = {"token_cache": str(cfg.data.output), **trained.summary()}
    if not is_main_process():
        return outputs  # other DDP ranks: evaluating and registering is rank 0's job
    evaluation: dict | None = None  # the evaluation report, when evaluation ran
    final = trained.best_checkpoint or trained.last_checkpoint
    if cfg.eval.get("after_training") and final:
        from musicgen_train.evaluation.run import evaluate

        evaluation = evaluate(cfg, model_source=str(final))
        outputs["eval_report"] = evaluation["report"]
    if cfg.registry.register_after_training:
        outputs.update(register_final_model(cfg, trained, evaluation))
    _print_summary(outputs)
    return outputs


def register_final_model(cfg: DictConfig, trained, evaluation: dict | None) -> dict:
    """Export the run's best (else last) checkpoint into the registry; print its URI."""
    from musicgen_train.registry.export import export_checkpoint

    checkpoint = trained.best_checkpoint or trained.last_checkpoint
    if checkpoint is None:
        log.warning("no checkpoint was written, so nothing is registered")
        return {}
    result = export_checkpoint(cfg, checkpoint, eval_report=evaluation)
    print(f"registered model: {result.uri}  (load it with model={result.uri})")
    return {"model_dir": str(result.model_dir), "registered_model": result.uri}


def _print_summary(outputs: dict) -> None:
    log.info("done. Everything this run wrote:")
    for key, value in outputs.items():
        log.info("  %-16s %s", key, value)
