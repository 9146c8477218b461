"""The service's state and lifecycle: settings, job store, audio store, worker, generators.

One ``Service`` per app, kept on ``app.state.service``; the routes only read it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from fastapi import Request
from sqlalchemy import text

from musicgen_train.generation import GenerationEngine
from musicgen_train.serve import jobs as states
from musicgen_train.serve.adapters import load_engines
from musicgen_train.serve.auth import Guard
from musicgen_train.serve.batch import reason
from musicgen_train.serve.estimates import QueueEstimator
from musicgen_train.serve.generator import InlineGenerator, ProcessGenerator
from musicgen_train.serve.jobs import JobStore
from musicgen_train.serve.metrics import ServiceMetrics
from musicgen_train.serve.models import ModelFacts, ServedModel, model_info
from musicgen_train.serve.settings import ServeSettings
from musicgen_train.serve.storage import AudioStore, delete_expired_audio
from musicgen_train.serve.stream_slots import StreamSlots
from musicgen_train.serve.streaming import StreamBroker
from musicgen_train.serve.worker import Worker

log = logging.getLogger(__name__)


class Service:
    """Everything one app holds: stores, models, generators, worker, guard and metrics."""

    def __init__(self, settings: ServeSettings, engines: dict[str, GenerationEngine] | None):
        self.settings = settings
        self.engines = engines
        self.store = JobStore(settings.database_url)
        self.estimates = QueueEstimator(self.store)
        self.audio = AudioStore(settings.storage)
        self.metrics = ServiceMetrics(
            queue_depth=lambda: self.store.count(states.QUEUED),
            ready=lambda: float(self.ready),
            models_loaded=lambda: len(self.models),
        )
        self.guard = Guard(settings)
        self.broker = StreamBroker()
        self.stream_slots = StreamSlots(settings.limits.max_streams_per_key)
        self.models: dict[str, ServedModel] = {}
        self.worker = Worker(
            settings, self.store, self.audio, self.models, self.metrics, self.broker
        )
        if engines is not None:  # known now, so that a never-started app can describe them
            self._describe_models({name: ModelFacts.of(e) for name, e in engines.items()})
        self.load_error: str | None = None
        self._db_status, self._db_checked_at = "not checked", -1e9
        self.stopping = threading.Event()

    def start(self) -> None:
        if self.engines is not None:  # loaded already: serve them from this process
            self._start_generators()
        else:
            loader = threading.Thread(target=self._start_generators, name="model-loader")
            loader.daemon = True
            loader.start()
        threading.Thread(target=self._cleanup_loop, name="audio-retention", daemon=True).start()

    def _start_generators(self) -> None:
        try:
            generators = self._generators()
            for generator in set(generators):
                facts = generator.start()
            if not self.models:
                self._describe_models(facts)
        except Exception as err:  # readiness reports it; liveness stays up for inspection
            log.exception("loading models failed")
            self.load_error = reason(err)
            return
        self.worker.start(generators)

    def _describe_models(self, facts: dict[str, ModelFacts]) -> None:
        for spec in self.settings.models:
            info = model_info(spec.source, spec.registry_uri)
            self.models[spec.name] = ServedModel(spec, facts[spec.name], info)

    def _generators(self) -> list:
        """One per worker thread: a generation process each, or one shared in-process one."""
        worker, stream = self.settings.worker, self.settings.stream
        count = worker.threads
        if self.engines is None and worker.isolation == "process":
            device = self.settings.torch_device()
            return [
                ProcessGenerator(
                    self.settings.models,
                    stream,
                    device=device,
                    torch_threads=worker.torch_threads,
                    nice=worker.nice,
                    precision=self.settings.precision,
                    max_rows=worker.max_batch_size,
                )
                for _ in range(count)
            ]
        engines = self.engines
        if engines is None:
            device, precision = self.settings.torch_device(), self.settings.precision
            engines = load_engines(self.settings.models, device, precision, worker.torch_threads)
        if worker.scheduler == "continuous":  # each worker thread steps its own batch
            return [
                InlineGenerator(engines, stream, worker.torch_threads, worker.max_batch_size)
                for _ in range(count)
            ]
        return [InlineGenerator(engines, stream, worker.torch_threads)] * count

    def _cleanup_loop(self) -> None:
        retention = self.settings.retention_hours * 3600
        while not self.stopping.wait(self.settings.cleanup_interval):
            try:
                removed = delete_expired_audio(self.store, self.audio, retention)
                if removed:
                    log.info("retention: deleted the audio of %d job(s)", removed)
            except Exception:
                log.exception("audio retention sweep failed")

    def drain(self) -> None:
        """The server was told to stop (SIGTERM, Ctrl-C): claim no more jobs, re-queue the
        running ones now, and let streams and event streams end. uvicorn waits up to 30 s for
        open connections before the lifespan's ``stop``; until this, a listener's stream kept
        it waiting while the worker went on claiming and generating queued jobs. Returns at
        once (the signal handler runs on the event loop); the worker threads do the rest."""
        self.stopping.set()
        self.worker.stopping.set()
        self.worker.wake.set()

    def stop(self) -> None:
        self.stopping.set()
        self.worker.stop()
        self.store.close()

    async def read(self, function, *args):
        """Run a short store read for an async route. SQLite reads take microseconds: inline
        they beat a hop through the thread pool, which queues under many clients. A database
        across the network is read in a thread instead, so the event loop never waits on it."""
        if self.store.engine.dialect.name == "sqlite":
            return function(*args)
        return await asyncio.to_thread(function, *args)

    async def database_status(self) -> str:
        """``ok`` or ``unavailable (<error type>)``; probed at most once a second, so probes
        under load stay cheap. The driver's message may name an internal host: it goes to the
        log (once per change), not into answers."""
        now = time.monotonic()
        if now - self._db_checked_at > 1.0:
            self._db_status = await asyncio.to_thread(self._ping_database)
            self._db_checked_at = now
        return self._db_status

    def _ping_database(self) -> str:
        try:
            with self.store.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as err:
            status = f"unavailable ({type(err).__name__})"
            if self._db_status != status:
                log.error("the job database is unavailable: %s", err)
            return status
        if self._db_status.startswith("unavailable"):
            log.info("the job database is reachable again")
        return "ok"

    @property
    def ready(self) -> bool:
        return len(self.models) == len(self.settings.models) and self.worker.alive

    @property
    def not_ready_reason(self) -> str:
        """What a refused request is told: a load error, a first load, or a generation process
        being replaced after it died or hung (seconds: it imports torch and loads the model)."""
        if self.load_error:
            return self.load_error
        if len(self.models) < len(self.settings.models):
            return "models are loading"
        return "the generation process is restarting"


# --- dependencies -----------------------------------------------------------------------------


# Dependencies and routes without blocking work are async: sync ones cost a hop through the
# thread pool each, which is what piles up under a hundred concurrent status requests.
async def service(request: Request) -> Service:
    return request.app.state.service
