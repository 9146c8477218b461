"""``musicgen-train serve model=<uri> serve.host=... serve.port=...``: the service under uvicorn."""

from __future__ import annotations

import logging
import sys

import uvicorn
from omegaconf import DictConfig

from musicgen_train.serve.app import create_app
from musicgen_train.serve.settings import ServeSettings

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> None:
    settings = ServeSettings.from_config(cfg)
    # The generation thread holds the GIL between torch ops; a request waiting for it waits up to
    # one switch interval per handoff (Python's default is 5 ms). Shorter turns keep it fast.
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
