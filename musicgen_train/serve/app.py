"""The FastAPI app: a job API over the generation worker, with streaming, health and metrics.

``create_app(settings)`` builds everything from settings; the models load in the background at
start-up (``/health`` answers at once, ``/health/ready`` once models and worker are up). Tests
may hand in models already loaded.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, StreamingResponse
from fastapi_offline import FastAPIOffline
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from musicgen_train.generation import GenerationEngine
from musicgen_train.serve import jobs as states
from musicgen_train.serve.auth import caller, owner_of
from musicgen_train.serve.deletion import add_deletion_routes
from musicgen_train.serve.errors import (
    database_unavailable,
    http_error,
    internal_error,
    invalid_request,
)
from musicgen_train.serve.health import READY_RETRY_SECONDS, add_health_routes
from musicgen_train.serve.jobs import Job
from musicgen_train.serve.listing import add_listing_route
from musicgen_train.serve.middleware import (
    BodySizeLimit,
    HeadAsGet,
    JsonByDefault,
    QuotaHeaders,
    RequestMetrics,
)
from musicgen_train.serve.responses import (
    describe,
    events,
    job_id_of,
    job_or_404,
    ranged,
    require_audio,
    visible,
    wav_stream,
)
from musicgen_train.serve.schemas import (
    AUTH_ERRORS,
    GenerationRequest,
    GenerationStatus,
    ModelList,
    error_responses,
)
from musicgen_train.serve.security import SecurityHeaders, add_cors
from musicgen_train.serve.service import Service, service
from musicgen_train.serve.settings import ServeSettings
from musicgen_train.serve.storage import CONTENT_TYPES
from musicgen_train.serve.stream_slots import HeldStreamingResponse, held_stream
from musicgen_train.serve.uploads import add_upload_routes, job_audio

log = logging.getLogger(__name__)

INDEX_HTML = Path(__file__).parent / "static" / "index.html"
DOCS_ASSETS = "/static/docs"  # Swagger UI's and ReDoc's files
AUTH = AUTH_ERRORS  # every /v1 route: 401, 403, 429
SUBMIT = (*AUTH, 413, 415, 503)
JOB = (*AUTH, 404)
RATE_LIMIT_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
EXPOSED_HEADERS = ("Location", "Retry-After", "X-Generation-Id", "Link", *RATE_LIMIT_HEADERS)
# Any text: an id that is no UUID is an unknown job (404), not an invalid request (422).
JobId = Annotated[str, PathParam(description="A generation's id (a UUID)")]


generation_caller = caller("generations")
request_caller = caller("requests")


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

    about = {
        "title": "musicgen-train inference service",
        "version": "1",
        "description": "Text-to-music generation jobs, streaming audio, health and metrics.",
        "lifespan": lifespan,
    }
    # /docs (Swagger UI) loads its JavaScript and CSS from this server (the copies
    # fastapi-offline ships, under DOCS_ASSETS), not from a CDN: it works offline. No /redoc:
    # ReDoc fetches its logo from its vendor's CDN on every load. serve.docs=false: neither
    # /docs nor /openapi.json (a public service need not describe itself to everyone).
    if settings.docs:
        app = FastAPIOffline(**about, static_url=DOCS_ASSETS, redoc_url=None)
    else:
        app = FastAPI(**about, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = svc
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(OperationalError, database_unavailable)
    app.add_exception_handler(Exception, internal_error)
    add_cors(app, settings, EXPOSED_HEADERS)
    app.add_middleware(QuotaHeaders)  # inside HeadAsGet (it copies the scope auth.caller writes)
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.limits.max_body_bytes,
        paths={"/v1/uploads": settings.limits.max_upload_bytes},
        timeout=settings.limits.body_timeout,
    )
    app.add_middleware(JsonByDefault, paths={"/v1/generations", "/v1/generations/stream"})
    app.add_middleware(HeadAsGet)
    app.add_middleware(SecurityHeaders)  # outside the others: their own answers get it too
    app.add_middleware(RequestMetrics, metrics=svc.metrics)
    add_health_routes(app)
    _add_routes(app)
    add_upload_routes(app, request_caller)
    add_listing_route(app, request_caller)
    add_deletion_routes(app, request_caller)
    return app


def _add_routes(app: FastAPI) -> None:
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> str:
        return INDEX_HTML.read_text()

    @app.get("/metrics", include_in_schema=False)
    def metrics(svc: Service = Depends(service)) -> Response:
        body, content_type = svc.metrics.render()
        return Response(body, media_type=content_type)

    @app.get(
        "/v1/models", response_model=ModelList, tags=["models"], responses=error_responses(*AUTH)
    )
    def list_models(
        svc: Service = Depends(service), _caller: str = Depends(request_caller)
    ) -> dict:
        """The served models with their registry version, metrics and limits."""
        names = [m.name for m in svc.settings.models]
        return {
            "default": svc.settings.default_model,
            "models": [svc.models[name].describe() for name in names if name in svc.models],
            "loading": [name for name in names if name not in svc.models],
        }

    @app.post(
        "/v1/generations",
        status_code=202,
        response_model=GenerationStatus,
        tags=["generations"],
        responses={422: {"description": "Invalid input"}, **error_responses(*SUBMIT)},
    )
    def create_generation(
        body: GenerationRequest,
        request: Request,
        response: Response,
        svc: Service = Depends(service),
        _caller: str = Depends(generation_caller),
    ) -> dict:
        """Queue a generation; poll its status link, then fetch the audio (or stream it)."""
        job = _submit(svc, body, stream=False, caller=_caller)
        response.headers["Location"] = f"/v1/generations/{job.id}"
        queue = None
        try:  # the job is queued: a failed estimate must not turn that into an error (a retry)
            queue = svc.estimates.of(job)
        except Exception:
            log.exception("estimating the queue position of job %s failed", job.id)
        return describe(job, queue)

    @app.post(
        "/v1/generations/stream",
        tags=["generations"],
        response_class=StreamingResponse,
        responses={
            200: {"content": {"audio/wav": {}}, "description": "WAV stream"},
            422: {"description": "Invalid input"},
            **error_responses(*SUBMIT),
        },
    )
    def create_streamed_generation(
        body: GenerationRequest,
        svc: Service = Depends(service),
        _caller: str = Depends(generation_caller),
    ) -> StreamingResponse:
        """Queue a generation and stream its audio while it is generated: a WAV header with
        unknown sizes, then 16-bit PCM. Progress: the job's events link (X-Generation-Id)."""
        cancel = svc.settings.stream.cancel_on_disconnect

        def respond(release) -> StreamingResponse:
            job = _submit(svc, body, stream=True, caller=_caller)
            return wav_stream(svc, job, cancel_on_disconnect=cancel, release=release)

        return held_stream(svc.stream_slots, _caller, respond)

    @app.get(
        "/v1/generations/{job_id}",
        response_model=GenerationStatus,
        tags=["generations"],
        responses=error_responses(*JOB),
    )
    async def get_generation(
        job_id: JobId, svc: Service = Depends(service), _caller: str = Depends(request_caller)
    ) -> dict:
        """Status, progress, timings, parameters and, for a failed job, the reason; while it
        is queued, its queue position and an estimated start (from measured throughput)."""
        job_id = job_id_of(job_id)
        job = visible(await svc.read(svc.store.get, job_id), job_id, _caller)
        return describe(job, await svc.read(svc.estimates.of, job))

    @app.get(
        "/v1/generations/{job_id}/audio",
        tags=["generations"],
        responses={
            200: {"content": {"audio/wav": {}, "audio/flac": {}}},
            206: {"content": {"audio/wav": {}, "audio/flac": {}}, "description": "A Range"},
            **error_responses(*JOB, 409, 410, 416, e409="Not ready (queued, running, failed)"),
        },
    )
    def get_audio(
        job_id: JobId,
        request: Request,
        svc: Service = Depends(service),
        _caller: str = Depends(request_caller),
    ) -> Response:
        job = job_or_404(svc, job_id, _caller)
        require_audio(job)
        try:
            data = svc.audio.get(job.audio_key)
        except FileNotFoundError:  # removed behind the job store's back (not by retention)
            raise HTTPException(410, f"the audio of generation {job.id} is gone") from None
        disposition = {"Content-Disposition": f'attachment; filename="{job.id}.{job.format}"'}
        return ranged(data, request.headers.get("range"), CONTENT_TYPES[job.format], disposition)

    @app.get(
        "/v1/generations/{job_id}/stream",
        tags=["generations"],
        response_class=StreamingResponse,
        responses={
            200: {"content": {"audio/wav": {}}, "description": "WAV stream"},
            **error_responses(*JOB, 409, 410, 503, e409="The generation failed or was canceled"),
        },
    )
    def stream_generation(
        job_id: JobId, svc: Service = Depends(service), _caller: str = Depends(request_caller)
    ) -> StreamingResponse:
        """The job's audio as a WAV stream: live while it generates, from the file after."""
        job = job_or_404(svc, job_id, _caller)
        if job.status in (states.FAILED, states.CANCELED):
            raise HTTPException(409, f"generation {job.id} is {job.status}: {job.error}")
        if job.status == states.SUCCEEDED:
            require_audio(job)
            if not svc.audio.exists(job.audio_key):  # checked before the 200 is sent
                raise HTTPException(410, f"the audio of generation {job.id} is gone")
        return held_stream(
            svc.stream_slots, _caller, lambda release: wav_stream(svc, job, release=release)
        )

    @app.get(
        "/v1/generations/{job_id}/events",
        tags=["generations"],
        response_class=StreamingResponse,
        responses={
            200: {"content": {"text/event-stream": {}}, "description": "Server-sent events"},
            **error_responses(*JOB),
        },
    )
    def generation_events(
        job_id: JobId, svc: Service = Depends(service), _caller: str = Depends(request_caller)
    ) -> StreamingResponse:
        """Server-sent events with status and progress until the job finishes."""
        job = job_or_404(svc, job_id, _caller)

        def respond(release) -> StreamingResponse:
            content = events(svc, job.id)
            return HeldStreamingResponse(content, release=release, media_type="text/event-stream")

        return held_stream(svc.stream_slots, _caller, respond)

    @app.post(
        "/v1/generations/{job_id}/cancel",
        response_model=GenerationStatus,
        tags=["generations"],
        responses=error_responses(*JOB, 409, e409="Already finished"),
    )
    def cancel_generation(
        job_id: JobId, svc: Service = Depends(service), _caller: str = Depends(request_caller)
    ) -> dict:
        job = job_or_404(svc, job_id, _caller)
        if not svc.store.cancel(job.id):
            job = job_or_404(svc, job_id, _caller)
            raise HTTPException(409, f"generation {job.id} already finished: {job.status}")
        svc.metrics.jobs.labels(job.model, states.CANCELED).inc()
        svc.broker.close(job.id)
        return describe(job_or_404(svc, job_id, _caller))


# --- helpers of the routes ------------------------------------------------------------------------


def _submit(svc: Service, body: GenerationRequest, *, stream: bool, caller: str) -> Job:
    specs = {spec.name: spec for spec in svc.settings.models}
    name = body.model or svc.settings.default_model
    if name not in specs:
        raise validation_error(
            "model", f"unknown model {name!r}: served are {sorted(specs)}", body.model
        )
    served = svc.models.get(name)
    limit = served.max_duration if served is not None else specs[name].max_duration
    if body.duration > limit:
        raise validation_error(
            "duration",
            f"duration {body.duration:g} s is longer than model {name!r} allows ({limit:g} s)",
            body.duration,
        )
    if served is not None and round(body.duration * served.sample_rate) < 1:  # empty audio
        raise validation_error(
            "duration",
            f"duration {body.duration:g} s is shorter than one sample of model {name!r} "
            f"(1/{served.sample_rate} s): the audio would be empty",
            body.duration,
        )
    queue = svc.settings.queue
    if svc.store.count(states.QUEUED) >= queue.max_size:  # a cheap early answer; create decides
        raise _queue_full(queue)
    if not svc.ready:
        raise HTTPException(
            503,
            f"not ready: {svc.not_ready_reason}",
            headers={"Retry-After": str(READY_RETRY_SECONDS)},
        )
    owner = owner_of(caller)
    job = svc.store.create(
        model=name,
        prompt=body.prompt,
        params={**body.generation_params(), **job_audio(svc, body, name, owner)},
        fmt=body.format,
        stream=stream,
        owner=owner,
        max_queued=queue.max_size,
    )
    if job is None:  # the bound, decided in the same transaction as the insert
        raise _queue_full(queue)
    if stream:
        svc.broker.open(job.id)  # before the worker can see the job, so no chunk is missed
    svc.worker.wake.set()
    return job


def _queue_full(queue) -> HTTPException:
    return HTTPException(
        503,
        f"the queue is full ({queue.max_size} jobs waiting): retry later",
        headers={"Retry-After": str(queue.retry_after)},
    )
