"""Evaluate during training: every N epochs, FAD / CLAP of the model being trained, logged.

The same ``MetricSuite`` as ``musicgen-train evaluate``: embedders are loaded and the reference
statistics computed once per run; each evaluation only generates and embeds the new audio.
Configured by ``callbacks.evaluation.*`` (off by default) and the ``eval`` group.

``log_evaluation`` sends an evaluation to a run's dashboards: metrics as ``eval/<metric>``, the
report's plots as images and a few generated clips as audio. ``python train.py`` uses it for
the final evaluation, this callback for each one during training.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger
from omegaconf import DictConfig

log = logging.getLogger(__name__)

LOGGED_CLIPS = 4  # generated clips sent to the dashboard per evaluation (all are on disk)


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
        self.plots: list[Path] = []  # of the latest evaluation
        self.clips: list[tuple[Path, str]] = []  # (wav, prompt) of the latest evaluation

    def on_train_epoch_end(self, trainer, module) -> None:
        epoch = trainer.current_epoch + 1
        if self.every_n_epochs <= 0 or epoch % self.every_n_epochs or not trainer.is_global_zero:
            return
        metrics = self.evaluate(module, epoch)
        log_evaluation(
            trainer.loggers,
            metrics,
            self.plots,
            self.clips,
            trainer.global_step,
            artifact_dir=f"eval/epoch={epoch}",
        )
        log.info(
            "evaluation after epoch %d: %s",
            epoch,
            ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()) or "no metric",
        )

    def evaluate(self, module, epoch: int) -> dict[str, float]:
        """Generate for the prompt set with the module's model and score it: ``eval/<metric>``."""
        from musicgen_train.evaluation.prompts import prompt_set_for
        from musicgen_train.evaluation.protocol import protocol_for
        from musicgen_train.evaluation.report import write_plots
        from musicgen_train.evaluation.run import generate_clips, generation_params
        from musicgen_train.evaluation.suite import MetricSuite
        from musicgen_train.model.loader import LoadedModel

        ecfg = self.cfg.eval
        out = self.run_dir / "eval_epochs" / f"epoch={epoch}"
        if self.prompt_set is None:
            self.prompt_set = prompt_set_for(self.cfg, self.max_prompts)
        was_training = module.training
        module.eval()
        try:
            with module.codec_attached() as model:
                loaded = LoadedModel(model, module.processor, "training", module.model_path)
                if self.suite is None:  # before generating: a broken weights file said first
                    self.suite = MetricSuite(
                        self.cfg,
                        self.prompt_set,
                        codec=model.audio_encoder,
                        codec_source=str(module.model_path),
                    )
                # The same protocol as `musicgen-train evaluate` (cut, loudness): the numbers
                # logged during training are comparable with the final report's.
                clips = generate_clips(
                    loaded,
                    self.prompt_set,
                    generation_params(ecfg.generation),
                    out,
                    int(ecfg.samples_per_prompt),
                    int(ecfg.generation.batch_size),
                    protocol=protocol_for(ecfg.get("protocol")),
                )
                scores = self.suite.score(clips)
        finally:
            module.train(was_training)
        scored = {"models": [{"source": f"epoch {epoch}", **scores}]}
        self.plots = write_plots(
            out, scored, {"model": clips}, int(ecfg.get("report_spectrograms", 4))
        )
        self.clips = report_clips(scored)
        return {
            f"eval/{name}": float(entry["value"])
            for name, entry in scores["metrics"].items()
            if entry.get("value") is not None
        }


# --- dashboards ----------------------------------------------------------------------------------


def report_clips(report: dict, limit: int = LOGGED_CLIPS) -> list[tuple[Path, str]]:
    """(wav, prompt) of the first generation of the first ``limit`` prompts of the first model."""
    rows = report["models"][0].get("per_prompt", []) if report.get("models") else []
    return [(Path(row["audio"][0]), row["text"]) for row in rows if row.get("audio")][:limit]


def evaluation_metrics(report: dict) -> dict[str, float]:
    """``eval/<metric>`` for each metric of the report that has a value (skipped ones have none)."""
    return {f"eval/{k}": float(v) for k, v in report["metrics"].items() if v is not None}


def log_evaluation(
    loggers,
    metrics: dict[str, float],
    plots,
    clips,
    step: int,
    artifact_dir: str = "eval",
) -> None:
    """Send one evaluation to each Lightning logger, as far as that logger has a place for it.

    W&B: metrics, ``wandb.Image`` per plot, ``wandb.Audio`` per clip. TensorBoard: scalars,
    images, audio summaries. MLflow: metrics, and the plots and clips as run artifacts under
    ``artifact_dir``. CSV: the metrics."""
    plots = [Path(p) for p in plots]
    for logger in loggers:
        if metrics:
            logger.log_metrics(metrics, step=step)
        if plots:
            log_images(logger, plots, step, artifact_dir)
        if clips:
            paths, captions = [Path(p) for p, _ in clips], [c for _, c in clips]
            log_audio_files(logger, "eval/audio", paths, captions, step, artifact_dir)
        logger.save()


def log_images(logger, paths: list[Path], step: int, artifact_dir: str = "eval") -> None:
    """PNG files as images, keyed ``eval/<file stem>``."""
    if isinstance(logger, WandbLogger):
        for path in paths:
            logger.log_image(f"eval/{path.stem}", [str(path)], step=step)
    elif isinstance(logger, TensorBoardLogger):
        import matplotlib.image

        for path in paths:
            pixels = matplotlib.image.imread(str(path))[..., :3]  # RGBA floats in [0, 1]
            logger.experiment.add_image(f"eval/{path.stem}", pixels, step, dataformats="HWC")
    elif isinstance(logger, MLFlowLogger):
        for path in paths:
            logger.experiment.log_artifact(logger.run_id, str(path), artifact_dir)


def log_audio_files(
    logger,
    key: str,
    paths: list[Path],
    captions: list[str],
    step: int,
    artifact_dir: str,
    audios=None,
    sample_rate: int | None = None,
) -> None:
    """Wav files as audio (``audios``/``sample_rate``: the same audio already in memory)."""
    import numpy as np

    if isinstance(logger, WandbLogger):
        logger.log_audio(key, [str(p) for p in paths], step=step, caption=list(captions))
    elif isinstance(logger, TensorBoardLogger):
        if audios is None:
            from musicgen_train.audio import read_audio

            loaded = [read_audio(p) for p in paths]
        else:
            loaded = [(audio, sample_rate) for audio in audios]
        for i, ((audio, rate), caption) in enumerate(zip(loaded, captions, strict=True)):
            # TensorBoard's audio summary is mono: average the channels.
            mono = np.atleast_2d(np.asarray(audio, dtype=np.float32)).mean(axis=0)
            logger.experiment.add_audio(
                f"{key}/{i}", np.clip(mono, -1, 1)[None], step, sample_rate=rate
            )
            logger.experiment.add_text(f"{key}/{i}/caption", caption, step)
    elif isinstance(logger, MLFlowLogger):
        for path in paths:
            logger.experiment.log_artifact(logger.run_id, str(path), artifact_dir)
