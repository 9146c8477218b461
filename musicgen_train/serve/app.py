"""The FastAPI app: a job API over the generation worker, with streaming, health and metrics.

``create_app(settings)`` builds everything from settings; the models load in the background at
start-up (``/health`` answers at once, ``/health/ready`` once models and worker are up). Tests
may hand in models already loaded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from uuid import UUID

from fastapi import Depends, FastAPI, HTTPException, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, StreamingResponse
from sqlalchemy import text

from musicgen_train.data.audio import read_audio
from musicgen_train.generation import GenerationEngine
from musicgen_train.serve import jobs as states
from musicgen_train.serve.auth import Guard, api_key_header, bearer, presented_key
from musicgen_train.serve.batch import reason
from musicgen_train.serve.generator import InlineGenerator, ProcessGenerator
from musicgen_train.serve.jobs import Job, JobStore
from musicgen_train.serve.metrics import ServiceMetrics
from musicgen_train.serve.middleware import BodySizeLimit, RequestMetrics
from musicgen_train.serve.models import ModelFacts, ServedModel, load_engine, model_info
from musicgen_train.serve.schemas import (
    GenerationRequest,
    GenerationStatus,
    Health,
    Links,
    ModelList,
    Timings,
)
from musicgen_train.serve.settings import ServeSettings
from musicgen_train.serve.storage import CONTENT_TYPES, AudioStore, delete_expired_audio
from musicgen_train.serve.streaming import StreamBroker, to_pcm16, wav_stream_header
from musicgen_train.serve.worker import Worker

log = logging.getLogger(__name__)

INDEX_HTML = Path(__file__).parent / "static" / "index.html"
EVENTS_POLL_SECONDS = 0.25
STORED_CHUNK_SECONDS = 0.5


class Service:
    """Everything one app holds: stores, models, generators, worker, guard and metrics."""

    def __init__(self, settings: ServeSettings, engines: dict[str, GenerationEngine] | None):
        self.settings = settings
        self.engines = engines
        self.store = JobStore(settings.database_url)
        self.audio = AudioStore(settings.storage)
        self.metrics = ServiceMetrics(queue_depth=lambda: self.store.count(states.QUEUED))
        self.guard = Guard(settings)
        self.broker = StreamBroker()
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
                )
                for _ in range(count)
            ]
        engines = self.engines
        if engines is None:
            device = self.settings.torch_device()
            engines = {spec.name: load_engine(spec, device) for spec in self.settings.models}
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
        """``ok`` or the error; probed at most once a second, so probes under load stay cheap."""
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
            return f"{type(err).__name__}: {err}"
        return "ok"

    @property
    def ready(self) -> bool:
        return len(self.models) == len(self.settings.models) and self.worker.alive


# --- dependencies -----------------------------------------------------------------------------


# Dependencies and routes without blocking work are async: sync ones cost a hop through the
# thread pool each, which is what piles up under a hundred concurrent status requests.
async def service(request: Request) -> Service:
    return request.app.state.service


def _caller(kind: str):
    async def dependency(
        request: Request,
        api_key: str | None = Security(api_key_header),
        credentials=Security(bearer),
    ) -> str:
        guard = request.app.state.service.guard
        identity = guard.identify(request, presented_key(api_key, credentials))
        guard.charge(identity, kind)
        return identity

    return dependency


generation_caller = _caller("generations")
request_caller = _caller("requests")


def job_or_404(svc: Service, job_id: UUID) -> Job:
    job = svc.store.get(str(job_id))
    if job is None:
        raise HTTPException(404, f"no generation with id {job_id}")
    return job


def validation_error(field: str, message: str, value) -> RequestValidationError:
    return RequestValidationError(
        [{"type": "value_error", "loc": ("body", field), "msg": message, "input": value}]
    )


# --- the app ------------------------------------------------------------------------------------


def create_app(
    settings: ServeSettings, engines: dict[str, GenerationEngine] | None = None
) -> FastAPI:
    """The service for ``settings``. Its models load at start-up, in a generation process
    (``serve.worker.isolation``); ``engines`` already loaded (by name) are served from this
    process instead."""
    svc = Service(settings, engines)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        svc.start()
        yield
        await asyncio.to_thread(svc.stop)

    app = FastAPI(
        title="musicgen-train inference service",
        version="1",
        description="Text-to-music generation jobs, streaming audio, health and metrics.",
        lifespan=lifespan,
    )
    app.state.service = svc
    if settings.cors.allow_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors.allow_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["X-API-Key", "Authorization", "Content-Type"],
            expose_headers=["Location", "Retry-After", "X-Generation-Id", "Link"],
        )
    app.add_middleware(BodySizeLimit, max_bytes=settings.limits.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=svc.metrics)
    _add_routes(app)
    return app


def _add_routes(app: FastAPI) -> None:
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> str:
        return INDEX_HTML.read_text()

    @app.get("/health", response_model=Health, tags=["health"])
    async def health() -> Health:
        """Liveness: the process answers."""
        return Health(status="ok")

    @app.get("/health/ready", response_model=Health, tags=["health"])
    async def ready(response: Response, svc: Service = Depends(service)) -> Health:
        """Readiness: models loaded, worker alive, database reachable."""
        detail = {
            "models_loaded": sorted(svc.models),
            "models_expected": [m.name for m in svc.settings.models],
            "worker_alive": svc.worker.alive,
            "load_error": svc.load_error,
        }
        detail["database"] = await svc.database_status()
        ok = svc.ready and detail["database"] == "ok"
        response.status_code = 200 if ok else 503
        return Health(status="ready" if ok else "not ready", detail=detail)

    @app.get("/metrics", include_in_schema=False)
    def metrics(svc: Service = Depends(service)) -> Response:
        body, content_type = svc.metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/v1/models", response_model=ModelList, tags=["models"])
    def list_models(
        svc: Service = Depends(service), _caller: str = Depends(request_caller)
    ) -> dict:
        """The served models with their registry version, metrics and limits."""
        return {
            "default": svc.settings.default_model,
            "models": [
                svc.models[m.name].describe() for m in svc.settings.models if m.name in svc.models
            ],
        }

    @app.post(
        "/v1/generations",
        status_code=202,
        response_model=GenerationStatus,
        tags=["generations"],
        responses={422: {"description": "Invalid input"}, 503: {"description": "Queue full"}},
    )
    def create_generation(
        body: GenerationRequest,
        request: Request,
        response: Response,
        svc: Service = Depends(service),
        _caller: str = Depends(generation_caller),
    ) -> dict:
        """Queue a generation; poll its status link, then fetch the audio (or stream it)."""
        job = _submit(svc, body, stream=False)
        response.headers["Location"] = f"/v1/generations/{job.id}"
        return describe(job)

    @app.post(
        "/v1/generations/stream",
        tags=["generations"],
        response_class=StreamingResponse,
        responses={200: {"content": {"audio/wav": {}}, "description": "WAV stream"}},
    )
    def create_streamed_generation(
        body: GenerationRequest,
        svc: Service = Depends(service),
        _caller: str = Depends(generation_caller),
    ) -> StreamingResponse:
        """Queue a generation and stream its audio while it is generated: a WAV header with
        unknown sizes, then 16-bit PCM. Progress: the job's events link (X-Generation-Id)."""
        job = _submit(svc, body, stream=True)
        return _wav_stream(svc, job)

    @app.get("/v1/generations/{job_id}", response_model=GenerationStatus, tags=["generations"])
    async def get_generation(
        job_id: UUID, svc: Service = Depends(service), _caller: str = Depends(request_caller)
    ) -> dict:
        """Status, progress, timings, parameters and, for a failed job, the reason."""
        job = await svc.read(svc.store.get, str(job_id))
        if job is None:
            raise HTTPException(404, f"no generation with id {job_id}")
        return describe(job)

    @app.get(
        "/v1/generations/{job_id}/audio",
        tags=["generations"],
        responses={
            200: {"content": {"audio/wav": {}, "audio/flac": {}}},
            409: {"description": "Not ready"},
            410: {"description": "Expired"},
        },
    )
    def get_audio(
        job_id: UUID, svc: Service = Depends(service), _caller: str = Depends(request_caller)
    ) -> Response:
        job = job_or_404(svc, job_id)
        _require_audio(job)
        return Response(
            svc.audio.get(job.audio_key),
            media_type=CONTENT_TYPES[job.format],
            headers={"Content-Disposition": f'attachment; filename="{job.id}.{job.format}"'},
        )

    @app.get(
        "/v1/generations/{job_id}/stream",
        tags=["generations"],
        response_class=StreamingResponse,
        responses={200: {"content": {"audio/wav": {}}}},
    )
    def stream_generation(
        job_id: UUID, svc: Service = Depends(service), _caller: str = Depends(request_caller)
    ) -> StreamingResponse:
        """The job's audio as a WAV stream: live while it generates, from the file after."""
        job = job_or_404(svc, job_id)
        if job.status in (states.FAILED, states.CANCELED):
            raise HTTPException(409, f"generation {job.id} is {job.status}: {job.error}")
        if job.status == states.SUCCEEDED:
            _require_audio(job)
        return _wav_stream(svc, job)

    @app.get("/v1/generations/{job_id}/events", tags=["generations"])
    def generation_events(
        job_id: UUID, svc: Service = Depends(service), _caller: str = Depends(request_caller)
    ) -> StreamingResponse:
        """Server-sent events with status and progress until the job finishes."""
        job = job_or_404(svc, job_id)
        return StreamingResponse(_events(svc, job.id), media_type="text/event-stream")

    @app.post(
        "/v1/generations/{job_id}/cancel",
        response_model=GenerationStatus,
        tags=["generations"],
        responses={409: {"description": "Already finished"}},
    )
    def cancel_generation(
        job_id: UUID, svc: Service = Depends(service), _caller: str = Depends(request_caller)
    ) -> dict:
        job = job_or_404(svc, job_id)
        if not svc.store.cancel(job.id):
            job = job_or_404(svc, job_id)
            raise HTTPException(409, f"generation {job.id} already finished: {job.status}")
        svc.metrics.jobs.labels(job.model, states.CANCELED).inc()
        svc.broker.close(job.id)
        return describe(job_or_404(svc, job_id))


# --- helpers of the routes ------------------------------------------------------------------------


def _submit(svc: Service, body: GenerationRequest, *, stream: bool) -> Job:
    specs = {spec.name: spec for spec in svc.settings.models}
    name = body.model or svc.settings.default_model
    if name not in specs:
        raise validation_error(
            "model", f"unknown model {name!r}: served are {sorted(specs)}", body.model
        )
    if body.duration > specs[name].max_duration:
        raise validation_error(
            "duration",
            f"duration {body.duration:g} s is longer than model {name!r} allows "
            f"({specs[name].max_duration:g} s)",
            body.duration,
        )
    queue = svc.settings.queue
    if svc.store.count(states.QUEUED) >= queue.max_size:
        raise HTTPException(
            503,
            f"the queue is full ({queue.max_size} jobs waiting): retry later",
            headers={"Retry-After": str(queue.retry_after)},
        )
    if not svc.ready:
        reason = svc.load_error or "models are loading"
        raise HTTPException(503, f"not ready: {reason}", headers={"Retry-After": "10"})
    job = svc.store.create(
        model=name,
        prompt=body.prompt,
        params=body.generation_params(),
        fmt=body.format,
        stream=stream,
    )
    if stream:
        svc.broker.open(job.id)  # before the worker can see the job, so no chunk is missed
    svc.worker.wake.set()
    return job


def _require_audio(job: Job) -> None:
    if job.status != states.SUCCEEDED:
        detail = f"generation {job.id} is {job.status}"
        detail += f" ({job.progress:.0%})" if job.status == states.RUNNING else ""
        detail += f": {job.error}" if job.error and job.status != states.QUEUED else ""
        raise HTTPException(409, detail)
    if job.audio_expired or not job.audio_key:
        raise HTTPException(410, f"the audio of generation {job.id} has expired (retention)")


def describe(job: Job) -> dict:
    base = f"/v1/generations/{job.id}"
    timings = Timings(
        created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at
    )
    if job.started_at:
        timings.queued_seconds = job.started_at - job.created_at
        if job.finished_at:
            timings.generation_seconds = job.finished_at - job.started_at
    return {
        "id": job.id,
        "status": job.status,
        "progress": job.progress,
        "model": job.model,
        "prompt": job.prompt,
        "params": job.params,
        "format": job.format,
        "error": job.error,
        "attempts": job.attempts,
        "audio_seconds": job.audio_seconds,
        "audio_expired": job.audio_expired,
        "timings": timings,
        "links": Links(
            self=base,
            audio=f"{base}/audio",
            stream=f"{base}/stream",
            events=f"{base}/events",
            cancel=f"{base}/cancel",
        ),
    }


def _wav_stream(svc: Service, job: Job) -> StreamingResponse:
    served = svc.models[job.model]
    header = wav_stream_header(served.sample_rate, served.channels)
    live = svc.broker.open(job.id) if job.status == states.QUEUED else svc.broker.get(job.id)

    async def finished() -> bool:
        job_now = await svc.read(svc.store.get, job.id)
        return job_now.status in states.FINISHED

    async def body():
        yield header
        sent = 0
        if live is not None:
            async for chunk in live.follow(finished):
                sent += len(chunk)
                yield chunk
        if sent:
            return
        # Not streamed live (finished already, or running without a live stream): the file.
        final = await _wait_finished(svc, job.id)
        if final.status == states.SUCCEEDED and final.audio_key:
            audio, _ = read_audio(await asyncio.to_thread(svc.audio.get, final.audio_key))
            step = int(STORED_CHUNK_SECONDS * served.sample_rate)
            for start in range(0, audio.shape[-1], step):
                yield to_pcm16(audio[:, start : start + step])

    links = f'</v1/generations/{job.id}/events>; rel="events"'
    headers = {
        "X-Generation-Id": job.id,
        "Location": f"/v1/generations/{job.id}",
        "Link": links,
        "Cache-Control": "no-store",
    }
    return StreamingResponse(body(), media_type="audio/wav", headers=headers)


async def _wait_finished(svc: Service, job_id: str) -> Job:
    while True:
        job = await asyncio.to_thread(svc.store.get, job_id)
        if job.status in states.FINISHED:
            return job
        await asyncio.sleep(EVENTS_POLL_SECONDS)


async def _events(svc: Service, job_id: str):
    last = None
    while True:
        job = await asyncio.to_thread(svc.store.get, job_id)
        event = {
            "id": job.id,
            "status": job.status,
            "progress": round(job.progress, 4),
            "error": job.error,
        }
        if event != last:
            yield f"event: {'progress' if job.status == states.RUNNING else 'status'}\n"
            yield f"data: {json.dumps(event)}\n\n"
            last = event
        if job.status in states.FINISHED:
            return
        await asyncio.sleep(EVENTS_POLL_SECONDS)
