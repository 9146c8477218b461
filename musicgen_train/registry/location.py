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


# The registry named by the most recently composed config (registry/config.py records it), so
# that ``model=models:/name@alias`` finds it from any stage without passing the config around.
_current_uri: str | None = None


def remember_tracking_uri(uri: str) -> None:
    global _current_uri
    _current_uri = uri


def current_tracking_uri() -> str:
    if _current_uri:
        return _current_uri
    return configured_tracking_uri(None, os.environ.get("MUSICGEN_TRAIN_HOME") or "outputs")
