"""Dashboards: Lightning loggers from ``cfg.logger`` and audio samples for every one of them.

W&B is the default. It runs offline unless it can upload (``WANDB_API_KEY`` set, or
``logger.mode=online``), and then says how to upload the run later. CSV, TensorBoard and MLflow
(a local SQLite store under the work dir unless a tracking URI is given) are the alternatives.
Audio samples always land as wav files under ``<run_dir>/samples/step-000100/`` too; evaluations
reach the same loggers through ``evaluation.callback.log_evaluation``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from lightning.pytorch.loggers import (
    CSVLogger,
    Logger,
    MLFlowLogger,
    TensorBoardLogger,
    WandbLogger,
)
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from musicgen_train.audio import write_audio
from musicgen_train.errors import UserError
from musicgen_train.evaluation.callback import log_audio_files
from musicgen_train.training.logger_config import (  # noqa: F401 (used and re-exported)
    LOGGERS,
    WANDB_MODES,
    validate_logger,
)

# WANDB_MODE values wandb accepts, mapped to the three that matter here.
_WANDB_ENV_MODES = {
    "online": "online",
    "run": "online",
    "offline": "offline",
    "dryrun": "offline",
    "disabled": "disabled",
}


def build_loggers(cfg: DictConfig, run_dir: str | Path) -> list[Logger]:
    """The Trainer's ``logger=`` list for ``cfg.logger.name``; files go under ``run_dir``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lcfg = cfg.logger
    builders = {
        "wandb": wandb_logger,
        "csv": csv_logger,
        "tensorboard": tensorboard_logger,
        "mlflow": mlflow_logger,
    }
    return [builders[lcfg.name](cfg, run_dir)]


def wandb_mode(lcfg: DictConfig) -> tuple[str, str]:
    """(mode, why): ``logger.mode`` if set, else ``WANDB_MODE``, else online iff a key is set."""
    if lcfg.mode:
        return lcfg.mode, f"logger.mode={lcfg.mode}"
    env_mode = os.environ.get("WANDB_MODE")
    if env_mode:
        if env_mode not in _WANDB_ENV_MODES:
            raise UserError(f"WANDB_MODE={env_mode!r} is not one of {list(_WANDB_ENV_MODES)}")
        return _WANDB_ENV_MODES[env_mode], f"WANDB_MODE={env_mode}"
    if os.environ.get("WANDB_API_KEY"):
        return "online", "WANDB_API_KEY is set"
    return "offline", "no WANDB_API_KEY is set"


def wandb_logger(cfg: DictConfig, run_dir: Path) -> WandbLogger:
    import wandb

    lcfg = cfg.logger
    mode, why = wandb_mode(lcfg)
    if lcfg.log_model and mode != "online":
        raise UserError(
            f"logger.log_model={lcfg.log_model} uploads checkpoints to W&B, which needs online "
            f"mode, but W&B is {mode} ({why}): set WANDB_API_KEY or logger.log_model=false"
        )
    # Our own id names the offline folder (offline-run-<time>-<id>), so the hint can point at it.
    run_id = secrets.token_hex(4)  # 8 characters of [0-9a-f], as W&B's own ids
    logger = ConfigOnceWandbLogger(
        project=lcfg.project,
        entity=lcfg.entity,
        # The run folder's name (recipe and data: custom-mysongs), so two datasets fine-tuned
        # with one recipe are told apart on the dashboard as on disk.
        name=lcfg.run_name or f"{_run_name(cfg)}-{run_id}",
        id=run_id,
        save_dir=str(run_dir),
        offline=mode == "offline",
        mode=mode,
        log_model=lcfg.log_model,
        tags=list(lcfg.tags),
        group=lcfg.group,
        notes=lcfg.notes,
        # The whole resolved config, so a dashboard run says exactly how it was made.
        config=OmegaConf.to_container(cfg, resolve=True),
        # Offline, the one line below is all a user needs (wandb's own banner and footer repeat
        # the sync advice); online, wandb prints the run's URL and nothing else.
        settings=wandb.Settings(silent=True) if mode == "offline" else wandb.Settings(quiet=True),
    )
    # Lightning passes anonymous=None, which wandb now warns about on every run; unset it.
    getattr(logger, "_wandb_init", {}).pop("anonymous", None)
    if mode == "offline":
        _print_rank_zero(
            f"W&B is offline ({why}): upload this run later with: "
            f"wandb sync {run_dir / 'wandb'}/offline-run-*-{run_id}"
        )
    return logger


class ConfigOnceWandbLogger(WandbLogger):
    """The run's config once. ``wandb.init`` gets the resolved config (``optim.lr``, ...);
    Lightning then logs the module's hyperparameters, ``{"cfg": <the same config>}``, which
    put every key a second time under ``cfg.`` in the run's config and the runs table."""

    def log_hyperparams(self, params) -> None:
        given = dict(params) if isinstance(params, Mapping) else vars(params)  # or a Namespace
        rest = {k: v for k, v in given.items() if k != "cfg"}
        if rest:
            super().log_hyperparams(rest)


def csv_logger(cfg: DictConfig, run_dir: Path) -> CSVLogger:
    # <run_dir>/csv/version_N/metrics.csv: a new version per run, never overwritten.
    return CSVLogger(
        save_dir=str(run_dir), name="csv", flush_logs_every_n_steps=cfg.logger.flush_every_n_steps
    )


def tensorboard_logger(cfg: DictConfig, run_dir: Path) -> TensorBoardLogger:
    return TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", default_hp_metric=False)


def mlflow_tracking_uri(cfg: DictConfig) -> str:
    """``logger.tracking_uri``, else ``MLFLOW_TRACKING_URI``, else SQLite under the work dir.

    MLflow 3 refuses its old file store, so the embedded default is a SQLite database.
    """
    if cfg.logger.tracking_uri:
        return cfg.logger.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    work_dir = Path(cfg.work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{work_dir / 'mlflow.db'}"


def mlflow_logger(cfg: DictConfig, run_dir: Path) -> MLFlowLogger:
    lcfg = cfg.logger
    tracking_uri = mlflow_tracking_uri(cfg)
    # Without a location a SQLite store puts artifacts under the current directory.
    artifacts = None
    if tracking_uri.startswith("sqlite:"):
        artifacts = (Path(cfg.work_dir).resolve() / "mlflow-artifacts").as_uri()
    return MLFlowLogger(
        experiment_name=lcfg.experiment_name,
        run_name=lcfg.run_name or _run_name(cfg),
        tracking_uri=tracking_uri,
        artifact_location=artifacts,
        tags=dict(lcfg.tags) if lcfg.tags else None,
        log_model=lcfg.log_model,
    )


def _run_name(cfg: DictConfig) -> str:
    return OmegaConf.select(cfg, "run_name") or cfg.recipe


@rank_zero_only
def _print_rank_zero(message: str) -> None:
    print(message, flush=True)


# --- audio samples ------------------------------------------------------------------------------


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].rstrip("-") or "audio"


def write_samples(
    folder: Path,
    key: str,
    audios: Sequence[np.ndarray],
    sample_rate: int,
    captions: Sequence[str],
) -> list[Path]:
    """``<key>-<i>-<caption>.wav`` per sample plus one line per file in ``captions.jsonl``. A
    file written again (a step redone after a resume) keeps one line, the newest."""
    folder.mkdir(parents=True, exist_ok=True)
    paths, rows = [], []
    for i, (audio, caption) in enumerate(zip(audios, captions, strict=True)):
        name = f"{_slug(key)}-{i:02d}-{_slug(caption)}.wav"
        paths.append(write_audio(folder / name, audio, sample_rate))
        rows.append({"file": name, "key": key, "caption": caption})
    index = folder / "captions.jsonl"
    written = {row["file"] for row in rows}
    kept = [
        line
        for line in (index.read_text(encoding="utf-8").splitlines() if index.exists() else [])
        if line.strip() and json.loads(line).get("file") not in written
    ]
    lines = [*kept, *(json.dumps(row) for row in rows)]
    index.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return paths


def log_audio(
    trainer,
    key: str,
    audios: Sequence[np.ndarray],
    sample_rate: int,
    captions: Sequence[str],
    run_dir: str | Path,
) -> list[Path]:
    """Log generated samples (``[channels, samples]`` or ``[samples]`` each) to every logger.

    Wav files are written under ``<run_dir>/samples/step-000100/`` whatever the logger; W&B gets
    ``wandb.Audio`` panels, TensorBoard audio summaries, MLflow the files as run artifacts.
    Only the global-zero process writes; the others return an empty list.
    """
    if not trainer.is_global_zero:
        return []
    step = trainer.global_step
    folder = Path(run_dir) / "samples" / f"step-{step:06d}"
    paths = write_samples(folder, key, audios, sample_rate, captions)
    for logger in trainer.loggers:
        log_audio_files(
            logger, key, paths, list(captions), step, f"samples/{folder.name}", audios, sample_rate
        )
    return paths
