"""Audio a job is conditioned on: melody references and audio prompts.

A client either uploads the file first (``POST /v1/uploads``, the file itself as the request
body, up to ``serve.limits.max_upload_bytes``) and names the id it gets back, or puts a small
file into the request, base64-encoded (the request then stays under
``serve.limits.max_body_bytes``)::

    {"prompt": "...", "melody": {"upload_id": "0b6f..."}, "audio_prompt": {"base64": "UklGR..."}}

Either way the file is decoded with the project's audio I/O (``musicgen_train.audio``) and
checked when the job is created (unreadable, empty, non-finite or too long: one 422 naming the
field), kept as it came under an id (``AudioStore.put_upload``), and the job's params hold the
id (``"melody": id``, ``"audio_prompt": id``). The generation side decodes those same bytes with
the same functions ``musicgen-train generate`` reads ``melody=`` and ``audio_prompt=`` files
with, so a seeded job gives the CLI's audio.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re

import numpy as np
from fastapi import Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError

from musicgen_train.audio import unreadable_format
from musicgen_train.serve.auth import owner_of
from musicgen_train.serve.batch import AUDIO_FIELDS
from musicgen_train.serve.decode import AudioTooLarge, read_audio_bounded
from musicgen_train.serve.jobs import new_job_id
from musicgen_train.serve.schemas import Upload, error_responses
from musicgen_train.serve.service import Service, service

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "audio/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def rejected(loc: tuple, message: str) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": ("body", *loc), "msg": message}])


def longest_audio_seconds(settings) -> float:
    """The longest audio any request can use: a melody (``max_melody_seconds``) or an audio
    prompt (shorter than its model's ``max_duration``). Longer uploads are refused."""
    longest_prompt = max(spec.max_duration for spec in settings.models)
    return max(settings.limits.max_melody_seconds, longest_prompt)


def check_audio(data: bytes, loc: tuple, max_seconds: float) -> tuple[np.ndarray, int]:
    """Decode ``data`` as the CLI reads a file, stopping past ``max_seconds``; a 422 at
    ``loc`` when it is no usable audio."""
    if not data:
        raise rejected(loc, "the audio file is empty (0 bytes)")
    try:
        audio, rate = read_audio_bounded(bytes(data), max_seconds)
    except AudioTooLarge as err:
        raise rejected(loc, f"the audio {err}") from None
    except Exception as err:  # soundfile: LibsndfileError, RuntimeError, ...
        what = unreadable_format(bytes(data[:16]))
        if what:
            message = f"is {what}, which cannot be read here: send wav, flac, ogg or mp3"
            raise rejected(loc, message) from None
        why = str(err).splitlines()[0] if str(err) else type(err).__name__
        # libsndfile names the object it read from ("Error opening <_io.BytesIO object at
        # 0x7f...>: Format not recognised."): the client needs the reason, not our address.
        why = re.sub(r"^Error opening <[^>]*>: ", "", why)
        raise rejected(loc, f"cannot be read as audio ({why[:200]})") from None
    if audio.shape[-1] == 0:
        raise rejected(loc, "holds no audio (0 samples)")
    if not np.isfinite(audio).all():
        raise rejected(loc, "holds NaN or infinite samples")
    return audio, rate


def job_audio(svc: Service, body, name: str, owner: str | None) -> dict:
    """The request's ``melody`` / ``audio_prompt``, checked for model ``name`` and stored as
    ``owner``'s (``auth.owner_of``): the entries the job's params keep (``{"melody": upload
    id, ...}``). An upload id names ``owner``'s uploads only: another key's is unknown here."""
    served = svc.models[name]
    out = {}
    for field in AUDIO_FIELDS:
        given = getattr(body, field)
        if given is None:
            continue
        if field == "melody" and not served.facts.melody:
            raise rejected(
                (field,),
                f"model {name!r} is conditioned on text only: a melody needs a melody model "
                "(see /v1/models, 'melody': true)",
            )
        if given.base64 is not None:
            loc, upload_id = (field, "base64"), None
            try:
                data = base64.b64decode(given.base64, validate=True)
            except (binascii.Error, ValueError):
                raise rejected(loc, "is not valid base64") from None
        else:
            loc, upload_id = (field, "upload_id"), str(given.upload_id)
            data = svc.audio.get_upload(upload_id, owner)
            if data is None:
                raise rejected(loc, f"no upload {upload_id} (POST /v1/uploads first)")
        audio, rate = check_audio(data, loc, longest_audio_seconds(svc.settings))
        _check_length(svc, served, body, field, loc, audio.shape[-1] / rate)
        if upload_id is None:
            upload_id = new_job_id()
            svc.audio.put_upload(upload_id, data, owner)
        out[field] = upload_id
    return out


def _check_length(svc, served, body, field: str, loc: tuple, seconds: float) -> None:
    facts = served.facts
    if field == "melody" and seconds > svc.settings.limits.max_melody_seconds:
        raise rejected(
            loc,
            f"the melody is {seconds:.2f} s long; at most "
            f"{svc.settings.limits.max_melody_seconds:g} s (serve.limits.max_melody_seconds)",
        )
    if field != "audio_prompt":
        return
    if seconds >= facts.window_seconds:
        raise rejected(
            loc,
            f"the audio prompt is {seconds:.2f} s long: it must be shorter than model "
            f"{served.name!r}'s window of {facts.window_seconds:g} s",
        )
    if seconds + body.duration > facts.max_duration + 1e-9:
        raise rejected(
            loc,
            f"the audio prompt ({seconds:.2f} s) + duration {body.duration:g} s is beyond "
            f"model {served.name!r}'s limit of {facts.max_duration:.2f} s",
        )


def add_upload_routes(app, caller) -> None:
    """``POST /v1/uploads``; ``caller`` is the app's key check for ordinary requests."""

    @app.post(
        "/v1/uploads",
        status_code=201,
        response_model=Upload,
        tags=["uploads"],
        openapi_extra=UPLOAD_BODY,
        responses={
            422: {"description": "Not audio this service can read"},
            **error_responses(
                401,
                403,
                413,
                429,
                e413="Larger than serve.limits.max_upload_bytes",
                e429="Rate limit exceeded, or serve.limits.max_uploads_per_key uploads stored",
            ),
        },
    )
    async def upload_audio(
        request: Request, svc: Service = Depends(service), _caller: str = Depends(caller)
    ) -> Upload:
        """Upload an audio file (wav, flac, ogg, mp3, ...: the raw file as the body) to use as
        a request's ``melody`` or ``audio_prompt`` (``{"upload_id": id}``). With API keys, only
        requests with the key that uploaded it can use it."""
        owner = owner_of(_caller)
        stored = await asyncio.to_thread(svc.audio.count_uploads, owner)
        if stored >= svc.settings.limits.max_uploads_per_key:
            raise HTTPException(
                429,
                f"{stored} uploads are stored for this key, the most it may keep "
                "(serve.limits.max_uploads_per_key): delete some (DELETE /v1/uploads/{id}) or "
                "wait until they expire (serve.retention_hours)",
            )
        data = await request.body()
        longest = longest_audio_seconds(svc.settings)
        audio, rate = await asyncio.to_thread(check_audio, data, (), longest)
        upload_id = new_job_id()
        await asyncio.to_thread(svc.audio.put_upload, upload_id, data, owner)
        return Upload(
            id=upload_id,
            bytes=len(data),
            seconds=audio.shape[-1] / rate,
            sample_rate=rate,
            channels=audio.shape[0],
        )
