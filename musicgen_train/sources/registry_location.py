"""Where the registry is: ``registry.uri``, else ``MLFLOW_TRACKING_URI``, else a local SQLite store.

Kept apart from the MLflow code so that composing a config does not import MLflow.
"""

from __future__ import annotations

import os
from pathlib import Path


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
