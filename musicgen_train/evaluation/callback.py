"""Evaluate during training: every N epochs, FAD / CLAP of the model being trained, logged.

The same ``MetricSuite`` as ``musicgen-train evaluate``: embedders are loaded and the reference
statistics computed once per run; each evaluation only generates and embeds the new audio.
Configured by ``callbacks.evaluation.*`` (off by default) and the ``eval`` group.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class EvaluationCallback(Callback):
    def __init__(
        self,
        cfg: DictConfig,
        run_dir: str | Path,
        every_n_epochs: int,
        max_prompts: int | None = None,
    ):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.every_n_epochs = int(every_n_epochs)
        self.max_prompts = max_prompts
        self.suite = None
        self.prompt_set = None

    def on_train_epoch_end(self, trainer, module) -> None:
        epoch = trainer.current_epoch + 1
        if self.every_n_epochs <= 0 or epoch % self.every_n_epochs or not trainer.is_global_zero:
            return
        metrics = self.evaluate(module, epoch)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        log.info(
            "evaluation after epoch %d: %s",
            epoch,
            ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()) or "no metric",
        )

    def evaluate(self, module, epoch: int) -> dict[str, float]:
        """Generate for the prompt set with the module's model and score it: ``eval/<metric>``."""
        from musicgen_train.evaluation.prompts import prompt_set_for
        from musicgen_train.evaluation.run import generate_clips, generation_params
        from musicgen_train.evaluation.suite import MetricSuite
        from musicgen_train.model.loader import LoadedModel

        ecfg = self.cfg.eval
        if self.prompt_set is None:
            self.prompt_set = prompt_set_for(self.cfg, self.max_prompts)
        was_training = module.training
        module.eval()
        try:
            with module.codec_attached() as model:
                loaded = LoadedModel(model, module.processor, "training", module.model_path)
                clips = generate_clips(
                    loaded,
                    self.prompt_set,
                    generation_params(ecfg.generation),
                    self.run_dir / "eval_epochs" / f"epoch={epoch}",
                    int(ecfg.samples_per_prompt),
                    int(ecfg.generation.batch_size),
                )
                if self.suite is None:
                    self.suite = MetricSuite(
                        self.cfg,
                        self.prompt_set,
                        codec=model.audio_encoder,
                        codec_source=str(module.model_path),
                    )
                scores = self.suite.score(clips)
        finally:
            module.train(was_training)
        return {
            f"eval/{name}": float(entry["value"])
            for name, entry in scores["metrics"].items()
            if entry.get("value") is not None
        }
