"""``musicgen-train serve model=<uri> serve.host=... serve.port=...``: the service under uvicorn."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import uvicorn
from omegaconf import DictConfig

from musicgen_train.model import ModelNotFoundError
from musicgen_train.serve.app import create_app
from musicgen_train.serve.models import model_info
from musicgen_train.serve.settings import ServeSettings

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> None:
    settings = ServeSettings.from_config(cfg)
    check_sources(settings)
    # With serve.worker.isolation=thread the generation thread holds the GIL between torch ops;
    # a request waiting for it waits up to one switch interval per handoff (Python's default is
    # 5 ms). Shorter turns keep it fast.
    sys.setswitchinterval(settings.worker.switch_interval)
    app = create_app(settings)
    names = ", ".join(f"{m.name} ({m.source})" for m in settings.models)
    log.info("serving %s on http://%s:%d (API docs at /docs)", names, settings.host, settings.port)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        proxy_headers=True,
        timeout_graceful_shutdown=30,
    )


def check_sources(settings: ServeSettings) -> None:
    """Fail at once, in one line, on a model that cannot exist, rather than start a server
    that never gets ready: a missing folder, or a registry name, alias or version that is not
    there (resolved from metadata; the download happens when the model loads)."""
    for spec in settings.models:
        is_path = spec.source.startswith((".", "/", "~"))
        if spec.source.startswith("models:/"):
            model_info(spec.source, spec.registry_uri)
        elif is_path and not Path(spec.source).expanduser().exists():
            raise ModelNotFoundError(f"model {spec.name}: path {spec.source} does not exist")
