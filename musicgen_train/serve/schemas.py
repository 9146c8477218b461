"""Request and response bodies of the HTTP API, with every range the service accepts."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_PROMPT_CHARS = 500


class AudioInput(BaseModel):
    """An audio file for a job: ``upload_id`` (from ``POST /v1/uploads``) or the file itself,
    base64-encoded (the whole request stays under ``serve.limits.max_body_bytes``)."""

    model_config = ConfigDict(extra="forbid")

    upload_id: UUID | None = Field(default=None, description="An id from POST /v1/uploads")
    base64: str | None = Field(default=None, min_length=1, description="The file, base64")

    @model_validator(mode="after")
    def _one(self) -> AudioInput:
        if (self.upload_id is None) == (self.base64 is None):
            raise ValueError("give exactly one of upload_id and base64")
        return self


class GenerationRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"prompt": "warm lo-fi piano with soft drums", "duration": 8.0}]
        },
    )

    # Numbers are strict JSON numbers: true, "5", NaN and Infinity are refused, not converted.
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="What to play")
    duration: float = Field(
        default=8.0,
        gt=0,
        le=600,
        strict=True,
        allow_inf_nan=False,
        description="Seconds (a JSON number); at most the model's max_duration",
    )
    model: str | None = Field(
        default=None, max_length=100, description="A served model's name; default the first"
    )
    guidance_scale: float = Field(
        default=3.0, ge=1.0, le=20.0, strict=True, allow_inf_nan=False, description="1: no CFG"
    )
    temperature: float = Field(default=1.0, gt=0.0, le=5.0, strict=True, allow_inf_nan=False)
    top_k: int = Field(default=250, ge=0, le=2048, strict=True, description="0 turns top-k off")
    top_p: float = Field(
        default=0.0, ge=0.0, le=1.0, strict=True, allow_inf_nan=False, description="0: off"
    )
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1, strict=True)
    format: Literal["wav", "flac"] = "wav"
    melody: AudioInput | None = Field(
        default=None, description="A melody reference (melody models only)"
    )
    audio_prompt: AudioInput | None = Field(
        default=None,
        description="Audio to continue; the result holds it, then `duration` seconds",
    )

    @field_validator("prompt", "model")
    @classmethod
    def _unicode(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("text must be valid Unicode (it holds a lone surrogate)") from None
            # PostgreSQL's text cannot hold NUL: refused here (422), not by the database (500).
            if "\x00" in value:
                raise ValueError("text must not contain NUL characters (\\u0000)")
        return value

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("prompt must contain some text, not only whitespace")
        return value

    def generation_params(self) -> dict:
        return {
            "duration": self.duration,
            "guidance_scale": self.guidance_scale,
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "seed": self.seed,
        }


class Upload(BaseModel):
    """An uploaded audio file, decoded and checked; ``id`` goes into a request's
    ``melody`` / ``audio_prompt`` as ``{"upload_id": id}``."""

    id: str
    bytes: int
    seconds: float
    sample_rate: int
    channels: int


class Links(BaseModel):
    self: str
    audio: str
    stream: str
    events: str
    cancel: str


class Timings(BaseModel):
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    queued_seconds: float | None = None
    generation_seconds: float | None = None


class QueueInfo(BaseModel):
    """Where a queued job stands. The wait is an estimate from measured throughput."""

    position: int = Field(ge=1, description="Place among queued jobs; 1 = the next one claimed")
    audio_ahead_seconds: float = Field(
        ge=0,
        description="Seconds of audio to generate first: the queued jobs ahead and the rest "
        "of the running ones",
    )
    estimated_wait_seconds: float | None = Field(
        default=None,
        ge=0,
        description="An estimate: the audio ahead divided by each model's recent throughput "
        "(seconds of audio per second of generating); null while a model ahead has not "
        "finished a job yet",
    )
    estimated_start_at: float | None = Field(
        default=None, description="Unix time: now plus estimated_wait_seconds; null if unknown"
    )


class GenerationStatus(BaseModel):
    id: str
    status: Literal["queued", "running", "succeeded", "failed", "canceled"]
    progress: float = Field(ge=0, le=1)
    model: str
    prompt: str
    params: dict
    format: str
    error: str | None = None
    attempts: int
    audio_seconds: float | None = None
    audio_expired: bool = False
    timings: Timings
    queue: QueueInfo | None = Field(
        default=None, description="Queue position and estimated start; only while queued"
    )
    links: Links


class GenerationList(BaseModel):
    """A page of the caller's generations, newest first."""

    data: list[GenerationStatus]
    has_more: bool = Field(description="Older generations follow: fetch `next`")
    next: str | None = Field(default=None, description="The next page's URL; null on the last")


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    source: str
    sample_rate: int
    channels: int
    limits: dict


class ModelList(BaseModel):
    default: str
    models: list[ModelInfo]
    loading: list[str] = Field(
        default=[], description="Models configured but not loaded yet (after a start): retry"
    )


class Health(BaseModel):
    status: str
    detail: dict = {}


class Error(BaseModel):
    """Every error but a 422 (whose ``detail`` lists the invalid fields)."""

    detail: str = Field(description="What went wrong, and what to do about it")


ERROR_MEANINGS = {
    401: "No API key: send 'X-API-Key: <key>' or 'Authorization: Bearer <key>'",
    403: "Wrong API key",
    404: "No generation with this id (or it belongs to another key)",
    409: "Not possible in the generation's state (not finished, failed, canceled)",
    410: "The audio was deleted after serve.retention_hours",
    413: "Request body larger than serve.limits.max_body_bytes",
    415: "The body is not sent as 'Content-Type: application/json'",
    416: "The Range asked for is outside the file",
    429: "Rate limit exceeded; wait Retry-After seconds",
    503: "Not ready, queue full or database unavailable; retry after Retry-After seconds",
}
AUTH_ERRORS = (401, 403, 429)


def error_responses(*codes: int, **descriptions: str) -> dict:
    """OpenAPI ``responses`` for these status codes, each with the ``Error`` body; a keyword
    ``e409="..."`` gives a route's own description of a code."""
    return {
        code: {"model": Error, "description": descriptions.get(f"e{code}", ERROR_MEANINGS[code])}
        for code in codes
    }
