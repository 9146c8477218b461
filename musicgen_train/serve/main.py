"""``musicgen-train serve model=<uri> serve.host=... serve.port=...``: the service under uvicorn."""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import signal
import socket
import sys
from pathlib import Path

import uvicorn
from omegaconf import DictConfig

from musicgen_train.errors import UserError
from musicgen_train.model import ModelNotFoundError
from musicgen_train.serve.app import create_app
from musicgen_train.serve.models import model_info
from musicgen_train.serve.security import redact_server_logs
from musicgen_train.serve.settings import ServeSettings

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> None:
    settings = ServeSettings.from_config(cfg)
    # The port first: a taken port is one line now, not a traceback after the models loaded.
    listener = bind_port(settings.host, settings.port)
    check_sources(settings)
    # With serve.worker.isolation=thread the generation thread holds the GIL between torch ops;
    # a request waiting for it waits up to one switch interval per handoff (Python's default is
    # 5 ms). Shorter turns keep it fast.
    sys.setswitchinterval(settings.worker.switch_interval)
    app = create_app(settings)
    freeze_heap()
    names = ", ".join(f"{m.name} ({m.source})" for m in settings.models)
    log.info("serving %s on http://%s:%d (API docs at /docs)", names, settings.host, settings.port)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        proxy_headers=True,
        timeout_graceful_shutdown=30,
    )
    redact_server_logs()  # after uvicorn.Config, which configures its loggers
    server = GracefulServer(config, on_exit=app.state.service.drain)
    server.run(sockets=[listener])  # the socket bound above: no race for it


def freeze_heap() -> None:
    """Collect, then take every object alive now out of the garbage collector's sight
    (``gc.freeze``): the modules of torch, transformers and FastAPI, about a million objects.
    A full collection walks every tracked object; over that heap it took about half a second on
    a busy 2-core CPU, with every request waiting: the one ~0.6 s stall of status and health
    under load in each benchmark run. Objects made later are still collected, in collections
    that no longer walk the start-up heap."""
    gc.collect()
    gc.freeze()


class GracefulServer(uvicorn.Server):
    """uvicorn's server, but a stop by SIGTERM or SIGINT that shut down gracefully (running jobs
    re-queued, the generation process gone) exits with status 0: uvicorn raises the signal
    again after its shutdown, which a supervisor reads as a crash ("exited (143)"). At the
    signal, ``on_exit`` drains the service at once (``Service.drain``): uvicorn first waits
    for open connections (a stream, an event stream) before the app's own shutdown."""

    def __init__(self, config: uvicorn.Config, on_exit=None):
        super().__init__(config)
        self.on_exit = on_exit

    def handle_exit(self, sig, frame) -> None:
        super().handle_exit(sig, frame)
        if self.on_exit is not None:
            self.on_exit()

    @contextlib.contextmanager
    def capture_signals(self):
        with super().capture_signals():
            yield
            captured = getattr(self, "_captured_signals", None)
            if captured:
                log.info("stopped by %s: shut down gracefully", signal.Signals(captured[-1]).name)
                captured.clear()


def bind_port(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or a UserError saying in one line why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no conflict
    try:
        listener.bind((host, port))
        listener.listen(2048)
    except OSError as err:
        listener.close()
        if err.errno == errno.EADDRINUSE:
            raise UserError(
                f"serve.port={port}: {host}:{port} is already in use by another program: stop "
                "it or choose another port (port=8766)"
            ) from err
        raise UserError(
            f"serve.host={host} serve.port={port}: cannot listen there ({err})"
        ) from err
    listener.set_inheritable(True)
    return listener


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
