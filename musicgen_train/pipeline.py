"""``python train.py``: prepare (if needed) -> train -> evaluate -> export, for one recipe."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict:
    """Run every stage the recipe asks for and return where each result went."""
    from musicgen_train.training.train import is_main_process, train

    dashboards = RunLoggers()
    # train() prepares the token cache first when it is missing or incomplete
    trained = train(cfg, callbacks=[dashboards])
    outputs: dict = {"token_cache": str(cfg.data.output), **trained.summary()}
    if not is_main_process():
        return outputs  # other DDP ranks: evaluating and registering is rank 0's job
    evaluation: dict | None = None  # the evaluation report, when evaluation ran
    final = trained.best_checkpoint or trained.last_checkpoint
    if cfg.eval.get("after_training") and final:
        from musicgen_train.evaluation.run import evaluate

        evaluation = evaluate(cfg, model_source=str(final))
        outputs["eval_report"] = evaluation["report"]
        dashboards.log_evaluation(evaluation)
    if cfg.registry.register_after_training:
        outputs.update(register_final_model(cfg, trained, evaluation))
    dashboards.close()
    _print_summary(outputs)
    return outputs


class RunLoggers(Callback):
    """Keeps the run's loggers after training, so the final evaluation lands in the same run."""

    def __init__(self):
        self.loggers: list = []
        self.step = 0

    def on_fit_end(self, trainer, module) -> None:
        if trainer.is_global_zero:
            self.loggers, self.step = list(trainer.loggers), trainer.global_step

    def log_evaluation(self, report: dict) -> None:
        """The report's metrics (``eval/<metric>``), plots and a few clips, at the last step."""
        from musicgen_train.evaluation.callback import (
            evaluation_metrics,
            log_evaluation,
            report_clips,
        )

        if not self.loggers:
            return
        plots, clips = report.get("plots", []), report_clips(report)
        log_evaluation(self.loggers, evaluation_metrics(report), plots, clips, self.step)
        for logger in self.loggers:
            logger.finalize("success")  # training finalized them once; flush what came since

    def close(self) -> None:
        """End the W&B run now, so its files hold everything when the command returns (W&B
        otherwise finishes it from an exit hook, writing the last records while Python exits)."""
        for logger in self.loggers:
            if type(logger).__name__ == "WandbLogger" and logger._experiment is not None:
                logger.experiment.finish()


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
    """Where each result went, a line each; the numbers (final losses) on one line."""
    numbers = {k: v for k, v in outputs.items() if isinstance(v, int | float)}
    log.info("done. Everything this run wrote:")
    for key, value in outputs.items():
        if key not in numbers and value is not None:  # no best checkpoint without validation
            log.info("  %-16s %s", key, _shown(value))
    if numbers:
        log.info("  %s", ", ".join(f"{k}={_number(v)}" for k, v in numbers.items()))


def _shown(value) -> str:
    """A path that exists, absolute (each line can be pasted from any folder); else as it is
    (a registry URI)."""
    path = Path(str(value))
    return str(path.resolve()) if path.exists() else str(value)


def _number(value) -> str:
    return str(value) if isinstance(value, int) or not math.isfinite(value) else f"{value:g}"
