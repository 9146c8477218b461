"""Where the registry is: ``registry.uri``, else ``MLFLOW_TRACKING_URI``, else a local SQLite store.

Kept apart from the MLflow code so that composing a config does not import MLflow.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf


def local_tracking_uri(work_dir: str | Path) -> str:
    return f"sqlite:///{(Path(work_dir) / 'registry' / 'mlflow.db').resolve()}"


def local_artifact_root(tracking_uri: str) -> str | None:
    """Artifacts of a local SQLite registry live next to its database."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()


def configured_tracking_uri(uri: str | None, work_dir: str | Path) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or local_tracking_uri(work_dir)


def default_tracking_uri() -> str:
    """The registry when no config says which: MLFLOW_TRACKING_URI, else the default work dir's."""
    return configured_tracking_uri(None, os.environ.get("MUSICGEN_TRAIN_HOME") or "outputs")


def load_options(cfg) -> dict:
    """The resolver's keyword arguments that a composed config decides: which tiny model, and
    which registry ``models:/`` URIs name (``registry.uri``, else MLFLOW_TRACKING_URI, else the
    local store under ``work_dir``)."""
    registry_uri = OmegaConf.select(cfg, "registry.uri")
    return {
        "tiny_seed": int(OmegaConf.select(cfg, "model.tiny_seed", default=0) or 0),
        "registry_uri": configured_tracking_uri(registry_uri, cfg.work_dir),
    }
