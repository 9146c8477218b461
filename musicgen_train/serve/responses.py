"""What the routes answer with: a job's description, its audio as a live WAV stream, its events."""

from __future__ import annotations

import asyncio
import io
import json
import re
from uuid import UUID

import soundfile as sf
from fastapi import HTTPException
from fastapi.responses import JSONResponse, Response, StreamingResponse

from musicgen_train.audio import read_audio
from musicgen_train.serve import jobs as states
from musicgen_train.serve.errors import excerpt
from musicgen_train.serve.jobs import Job
from musicgen_train.serve.schemas import Links, Timings
from musicgen_train.serve.service import Service
from musicgen_train.serve.stream_slots import HeldStreamingResponse
from musicgen_train.serve.streaming import to_pcm16, wav_stream_header

EVENTS_POLL_SECONDS = 0.25
STORED_CHUNK_SECONDS = 0.5


def not_found(job_id: str) -> HTTPException:
    return HTTPException(404, f"no generation with id {excerpt(job_id)}")


def job_id_of(value: str) -> str:
    """``value`` as a stored job id (a UUID, written canonically); 404 for anything else. To a
    client an id that cannot exist is an unknown one, as GitHub, Stripe and OpenAI answer it:
    a 422 for a mistyped id, a 404 for a well-formed unknown one told two stories about one
    mistake, and differed between a job store's ids and another's."""
    try:
        return str(UUID(value))
    except ValueError:
        raise not_found(value) from None


def job_or_404(svc: Service, job_id: str, caller: str | None = None) -> Job:
    """The job, if ``caller`` may see it: a job belongs to the API key that created it, and to
    another key it does not exist (404, so ids of other clients' jobs cannot be probed)."""
    job_id = job_id_of(job_id)
    return visible(svc.store.get(job_id), job_id, caller)


def visible(job: Job | None, job_id: str, caller: str | None) -> Job:
    if job is None or (job.owner is not None and job.owner != caller):
        raise not_found(job_id)
    return job


def require_audio(job: Job) -> None:
    if job.status != states.SUCCEEDED:
        detail = f"generation {job.id} is {job.status}"
        detail += f" ({job.progress:.0%})" if job.status == states.RUNNING else ""
        detail += f": {job.error}" if job.error and job.status != states.QUEUED else ""
        raise HTTPException(409, detail)
    if job.audio_expired or not job.audio_key:
        raise HTTPException(410, f"the audio of generation {job.id} has expired (retention)")


def describe(job: Job, queue: dict | None = None) -> dict:
    """A job's status body; ``queue`` is ``QueueEstimator.of(job)`` for a queued job."""
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
        "queue": queue,
        "links": Links(
            self=base,
            audio=f"{base}/audio",
            stream=f"{base}/stream",
            events=f"{base}/events",
            cancel=f"{base}/cancel",
        ),
    }


def _stream_format(svc: Service, job: Job) -> tuple[int, int]:
    """The stream's sample rate and channels: the served model's, else (models still loading
    at start-up, or the job's model no longer served) a finished job's own file's; a job still
    to generate waits for its model: 503 with Retry-After, never a 500."""
    served = svc.models.get(job.model)
    if served is not None:
        return served.sample_rate, served.channels
    if job.status == states.SUCCEEDED and job.audio_key:
        info = sf.info(io.BytesIO(svc.audio.get(job.audio_key)))
        return int(info.samplerate), int(info.channels)
    if svc.load_error or job.model in {spec.name for spec in svc.settings.models}:
        reason = svc.not_ready_reason
        raise HTTPException(503, f"not ready: {reason}", headers={"Retry-After": "10"})
    raise HTTPException(409, f"model {job.model!r} of generation {job.id} is not served here")


def wav_stream(
    svc: Service, job: Job, cancel_on_disconnect: bool = False, release=lambda: None
) -> StreamingResponse:
    """``job``'s audio as a WAV stream; ``cancel_on_disconnect``: the client that asked for the
    job by streaming it leaves before its end (Ctrl-C on curl, a closed player): the job is
    canceled, so the worker stops generating for nobody (``serve.stream.cancel_on_disconnect``).
    ``release`` gives the caller's stream slot back when the stream ends (``stream_slots``)."""
    sample_rate, channels = _stream_format(svc, job)
    header = wav_stream_header(sample_rate, channels)
    live = svc.broker.open(job.id) if job.status == states.QUEUED else svc.broker.get(job.id)

    async def finished() -> bool:
        if svc.stopping.is_set():  # the server is stopping: its job goes back to the queue
            return True
        job_now = await svc.read(svc.store.get, job.id)
        return job_now is None or job_now.status in states.FINISHED  # None: deleted

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
        final = await wait_finished(svc, job.id)
        if final is not None and final.status == states.SUCCEEDED and final.audio_key:
            try:
                data = await asyncio.to_thread(svc.audio.get, final.audio_key)
            except FileNotFoundError:  # deleted or expired since: the stream ends here
                return
            audio, _ = read_audio(data)
            step = int(STORED_CHUNK_SECONDS * sample_rate)
            for start in range(0, audio.shape[-1], step):
                yield to_pcm16(audio[:, start : start + step])

    async def body_or_cancel():
        ended = False
        try:
            async for chunk in body():
                yield chunk
            ended = True
        finally:  # the client left: Starlette cancels this, or closes it after a failed write
            if not ended and cancel_on_disconnect and not svc.stopping.is_set():
                cancel_abandoned(svc, job)

    links = f'</v1/generations/{job.id}/events>; rel="events"'
    headers = {
        "X-Generation-Id": job.id,
        "Location": f"/v1/generations/{job.id}",
        "Link": links,
        "Cache-Control": "no-store",
    }
    return HeldStreamingResponse(
        body_or_cancel(), release=release, media_type="audio/wav", headers=headers
    )


def cancel_abandoned(svc: Service, job: Job) -> None:
    """Cancel a job whose streaming client left; a no-op once it has finished. Synchronous: it
    runs in a cancelled task, where an ``await`` would be cancelled again."""
    if svc.store.cancel(job.id, reason="canceled: the client of its stream disconnected"):
        svc.metrics.jobs.labels(job.model, states.CANCELED).inc()
        svc.broker.close(job.id)


async def wait_finished(svc: Service, job_id: str) -> Job | None:
    """The job once finished; None if the server stops first (it is re-queued, not run) or
    the job was deleted."""
    while True:
        job = await asyncio.to_thread(svc.store.get, job_id)
        if job is None or job.status in states.FINISHED:
            return job
        if svc.stopping.is_set():
            return None
        await asyncio.sleep(EVENTS_POLL_SECONDS)


def _event_queue(svc: Service, job: Job) -> dict | None:
    """Queue facts for an event, rounded so that a waiting job's events come when they change
    (the position, or the estimate by a second), not at every poll."""
    queue = svc.estimates.of(job)
    if queue is None:
        return None
    rounded = {"position": queue["position"]}
    rounded["audio_ahead_seconds"] = round(queue["audio_ahead_seconds"], 1)
    for key in ("estimated_wait_seconds", "estimated_start_at"):
        rounded[key] = None if queue[key] is None else round(queue[key])
    return rounded


async def events(svc: Service, job_id: str):
    last = None
    while True:
        job = await asyncio.to_thread(svc.store.get, job_id)
        if job is None:  # deleted (DELETE /v1/generations/{id}) while a client listened
            return
        event = {
            "id": job.id,
            "status": job.status,
            "progress": round(job.progress, 4),
            "error": job.error,
        }
        if job.status == states.QUEUED:
            event["queue"] = await asyncio.to_thread(_event_queue, svc, job)
        if event != last:
            yield f"event: {'progress' if job.status == states.RUNNING else 'status'}\n"
            yield f"data: {json.dumps(event)}\n\n"
            last = event
        if job.status in states.FINISHED or svc.stopping.is_set():
            return  # finished, or the server is stopping (the client reconnects elsewhere)
        await asyncio.sleep(EVENTS_POLL_SECONDS)


_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_BEYOND_ANY_FILE = 10**18


def _offset(digits: str) -> int:
    """A Range offset as a number; one of more than 18 digits is past any file (Python refuses
    to convert over 4300 digits: ``bytes=<5000 nines>-`` was a 500)."""
    return int(digits) if len(digits) <= 18 else _BEYOND_ANY_FILE


def ranged(data: bytes, range_header: str | None, media_type: str, headers: dict) -> Response:
    """A stored file, whole (200) or the one byte range asked for (206, RFC 9110 14): media
    players seek with ``Range`` and Safari plays audio only from servers that answer it. A
    range past the end is 416; several ranges, or a malformed one, get the whole file (a server
    may ignore Range)."""
    headers = {**headers, "Accept-Ranges": "bytes"}
    size = len(data)
    match = _RANGE.fullmatch((range_header or "").strip())
    if match is None or match.group(1) == match.group(2) == "":
        return Response(data, media_type=media_type, headers=headers)
    first, last = match.group(1), match.group(2)
    if first == "":  # the last N bytes
        start, end = max(0, size - _offset(last)), size - 1
        if _offset(last) == 0:
            start = size  # nothing: unsatisfiable
    else:
        start = _offset(first)
        end = min(_offset(last), size - 1) if last else size - 1
        if last and _offset(last) < start:  # not a valid range: ignored
            return Response(data, media_type=media_type, headers=headers)
    if start >= size:
        return JSONResponse(
            {"detail": f"range {excerpt(range_header)!r} is outside the file's {size} bytes"},
            status_code=416,
            headers={"Content-Range": f"bytes */{size}", "Accept-Ranges": "bytes"},
        )
    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return Response(data[start : end + 1], status_code=206, media_type=media_type, headers=headers)
