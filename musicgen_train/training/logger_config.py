"""What ``logger=...`` may say, checked when the config is composed (no Lightning imported)."""

from __future__ import annotations

from omegaconf import DictConfig

from musicgen_train.config import check_choice, check_range
from musicgen_train.errors import ConfigError

LOGGERS = ("wandb", "csv", "tensorboard", "mlflow")
WANDB_MODES = (None, "online", "offline", "disabled")


def validate_logger(cfg: DictConfig) -> None:
    """Checks run when the config is composed (``musicgen_train.training.config.validate``)."""
    if "logger" not in cfg or not isinstance(cfg.logger, DictConfig):
        raise ConfigError(f"logger is missing: choose one of {list(LOGGERS)}")
    check_choice(cfg, "logger.name", LOGGERS)
    name = cfg.logger.name
    if name == "wandb":
        check_choice(cfg, "logger.mode", WANDB_MODES)
        check_choice(cfg, "logger.log_model", (False, True, "all"))
        if not cfg.logger.project:
            raise ConfigError("logger.project is empty: name the W&B project")
    elif name == "csv":
        check_range(cfg, "logger.flush_every_n_steps", 1)
    elif name == "mlflow":
        check_choice(cfg, "logger.log_model", (False, True, "all"))
        if not cfg.logger.experiment_name:
            raise ConfigError("logger.experiment_name is empty: name the MLflow experiment")
