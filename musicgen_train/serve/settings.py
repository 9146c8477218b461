"""Service settings: the ``serve`` config group (plus ``model``) as a typed, validated object.

The YAML reads the few deployment-specific values from the environment (database URL, audio
storage, API keys), so a container is configured with env vars alone; see docs/serving.md.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel, ConfigDict, Field, field_validator

from musicgen_train.errors import ConfigError
from musicgen_train.sources import load_options

RATE = re.compile(r"^\s*\d+\s*(/|per)\s*\d*\s*(second|minute|hour|day)s?\s*$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    source: str  # what the loader resolves: tiny, hub id, folder, .ckpt, models:/name@alias
    max_duration: float = Field(default=30.0, gt=0, le=600)
    tiny_seed: int = 0
    registry_uri: str | None = None  # the registry models:/ sources name
    # A LoRA export kept apart (export.merge_lora=false): serve its adapter/ on the weights of
    # the served model of this name (one copy of the base for many fine-tunes; serve/adapters.py)
    base: str | None = None


class QueueSettings(_Section):
    max_size: int = Field(default=64, ge=1)
    retry_after: int = Field(default=5, ge=1)  # seconds, sent with 503 when the queue is full


class JobSettings(_Section):
    # A job may run timeout + timeout_per_audio_second * its duration seconds: a short job is
    # never cut by a limit sized for long ones, a long one is not failed by one sized for short.
    timeout: float = Field(default=120.0, gt=0)
    timeout_per_audio_second: float = Field(default=30.0, ge=0)
    stale_after: float = Field(default=30.0, ge=0)  # seconds without heartbeat = worker died
    max_attempts: int = Field(default=2, ge=1)  # re-queues after a crash, then failed
    # continuous batching: seconds without a word from the generation process while jobs run
    # (it sends progress every step) = hung: it is killed and its jobs fail.
    hang_after: float = Field(default=120.0, gt=0)

    def timeout_for(self, duration: float) -> float:
        """Seconds a job of ``duration`` seconds of audio may run before it fails."""
        return self.timeout + self.timeout_per_audio_second * max(0.0, float(duration))


class WorkerSettings(_Section):
    # process: models load and generate in a child process, so the sampling loop never holds
    # the GIL the HTTP server needs; thread: in the server's own process (less memory, no
    # start-up of a second interpreter, e.g. for debugging).
    isolation: Literal["process", "thread"] = "process"
    threads: int = Field(default=1, ge=1, le=16)  # parallel batches; one process per thread
    # continuous: a queued job joins the running batch at the next decode step and leaves it
    # when its own duration is reached (any mix of parameters); static: jobs with equal
    # parameters share one generate call that runs to its end (the old behaviour).
    scheduler: Literal["continuous", "static"] = "continuous"
    max_batch_size: int = Field(default=8, ge=1, le=64)  # rows decoded together
    batch_wait: float = Field(default=0.05, ge=0, le=5)  # static: seconds to gather companions
    # torch intra-op threads for generation; None = the engine's rule (the CPUs this process may
    # use: affinity and cgroup quota). On a CPU shared with the HTTP server, 1 keeps requests fast.
    torch_threads: int | None = Field(default=None, ge=1, le=256)
    # CPU priority of a generation process (os.nice): on a CPU shared with the HTTP server,
    # requests go first. 0 = the server's own priority.
    nice: int = Field(default=0, ge=0, le=19)
    # Seconds a thread may hold the GIL while another waits (sys.setswitchinterval), set by
    # `musicgen-train serve`: requests wait less for the generation thread.
    switch_interval: float = Field(default=0.0005, gt=0, le=0.1)


class StreamSettings(_Section):
    chunk_seconds: float = Field(default=0.5, gt=0)
    first_chunk_seconds: float = Field(default=0.1, gt=0)  # the first, for early first audio
    # Left context decoded before each window: the convolutions reach 4 frames back, the LSTM's
    # memory further; 0.5 s keeps the stream within -60 dB of the whole decode (docs/serving.md).
    context_seconds: float = Field(default=0.5, ge=0)
    # Frames held back and crossfaded: the decoder looks 4 frames ahead.
    lookahead_frames: int = Field(default=5, ge=1)
    # POST /v1/generations/stream: a client that leaves before the end cancels its job.
    cancel_on_disconnect: bool = True


class AuthSettings(_Section):
    api_keys_env: str = "MUSICGEN_SERVE_API_KEYS"  # comma-separated keys in this variable
    keys_file: str | None = None  # one key per line; '#' starts a comment


class RateLimitSettings(_Section):
    storage: str = "memory://"  # or redis://host:6379/0, shared by replicas
    generations: str = "30/minute"  # per API key (or client address when open)
    requests: str = "1200/minute"
    failed_keys: str = "10/minute"  # wrong or missing keys per client address, then 429

    @field_validator("generations", "requests", "failed_keys")
    @classmethod
    def _rate(cls, value: str) -> str:
        if not RATE.match(value):
            raise ValueError(f"{value!r} is not a rate such as '30/minute' or '5 per second'")
        return value


class CorsSettings(_Section):
    allow_origins: list[str] = []


class RequestLimits(_Section):
    max_body_bytes: int = Field(default=65536, ge=1024)
    # POST /v1/uploads: an audio file (a melody reference or an audio prompt) as the body
    max_upload_bytes: int = Field(default=16 * 2**20, ge=1024)
    max_melody_seconds: float = Field(default=60.0, gt=0)
    # Uploads one API key (or, on an open service, everyone) may keep at once: each is stored
    # until serve.retention_hours, and the request rate alone let a key fill the disk.
    max_uploads_per_key: int = Field(default=100, ge=1)
    # Streams (events, audio streams) one API key (or, on an open service, one client address)
    # keeps open at once; each asks the job store about its job several times a second.
    max_streams_per_key: int = Field(default=32, ge=1)
    # Seconds a request body may stall between two of its chunks before a 408: a client that
    # opens a body and stops holds a connection and a worker slot for nothing.
    body_timeout: float = Field(default=30.0, gt=0)


class ServeSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    models: list[ModelSpec] = Field(min_length=1)
    database_url: str = "sqlite:///outputs/serve/jobs.db"
    storage: str = "outputs/serve/audio"
    retention_hours: float = Field(default=24.0, gt=0)
    cleanup_interval: float = Field(default=300.0, gt=0)
    queue: QueueSettings = QueueSettings()
    jobs: JobSettings = JobSettings()
    worker: WorkerSettings = WorkerSettings()
    stream: StreamSettings = StreamSettings()
    auth: AuthSettings = AuthSettings()
    rate_limit: RateLimitSettings = RateLimitSettings()
    cors: CorsSettings = CorsSettings()
    limits: RequestLimits = RequestLimits()
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")
    # The engine's precision (docs/generation.md): auto = int8 on CPU, bf16/fp16 on CUDA; int4
    # (CPU, opt-in) is faster at batch 1 at a larger quality cost. At every precision a seeded
    # row's tokens do not depend on its batch companions.
    precision: Literal["auto", "fp32", "bf16", "fp16", "int8", "int4"] = "auto"
    log_level: str = "info"
    docs: bool = True  # /docs and /openapi.json; false hides the API's description

    def torch_device(self) -> str:
        """``auto`` = the first GPU when there is one, else the CPU."""
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    @property
    def default_model(self) -> str:
        return self.models[0].name

    def api_keys(self) -> set[str]:
        """Keys from the environment variable and the keys file; empty = the service is open."""
        keys = {k.strip() for k in os.environ.get(self.auth.api_keys_env, "").split(",")}
        if self.auth.keys_file:
            path = Path(self.auth.keys_file).expanduser()
            if not path.is_file():
                raise ConfigError(f"serve.auth.keys_file={path} does not exist")
            for line in path.read_text().splitlines():
                keys.add(line.split("#", 1)[0].strip())
        return {k for k in keys if k}

    @classmethod
    def from_config(cls, cfg: DictConfig) -> ServeSettings:
        serve = OmegaConf.to_container(cfg.serve, resolve=True)
        serve["models"] = [
            _model_spec(item, cfg) for item in (serve.get("models") or [_default_model(cfg)])
        ]
        try:
            return cls(**serve)
        except ValueError as err:
            raise ConfigError(_first_error(err)) from err


def _default_model(cfg: DictConfig) -> dict:
    model = cfg.model
    name = model.name if model.name != "custom" else model_name_from_source(str(model.id))
    return {
        "name": name,
        "source": str(model.id),
        "max_duration": float(model.max_duration),
        **load_options(cfg),
    }


def _model_spec(item, cfg: DictConfig) -> dict:
    if isinstance(item, dict):
        item = dict(item)
        item.setdefault("name", model_name_from_source(str(item.get("source", ""))))
        item.setdefault("max_duration", float(cfg.model.max_duration))
        return {**load_options(cfg), **item}
    return {
        "name": model_name_from_source(str(item)),
        "source": str(item),
        "max_duration": float(cfg.model.max_duration),
        **load_options(cfg),
    }


def model_name_from_source(source: str) -> str:
    """A short name for a source: ``models:/jazz@prod`` -> jazz, ``org/model`` -> model."""
    if source.startswith("models:/"):
        source = re.split(r"[@/]", source[len("models:/") :])[0]
    name = Path(source.rstrip("/")).name or "model"
    return re.sub(r"[^A-Za-z0-9._-]", "-", name)[:100]


def _first_error(err: ValueError) -> str:
    errors = getattr(err, "errors", lambda: [])()
    if not errors:
        return f"serve: {err}"
    first = errors[0]
    key = "serve." + ".".join(str(p) for p in first["loc"])
    return f"{key}={first.get('input')!r} is not allowed: {first['msg']}"
