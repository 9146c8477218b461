"""One ``generate`` call for a batch of jobs, wherever the generator lives (thread or process).

``generate_batch`` is all the work a batch needs from the model: it samples codes for every prompt,
streams decoded PCM while it goes, reports progress, asks ``stop_reason`` after every step
whether to stop, and returns each job's encoded file. Its inputs and outputs are plain picklable
values, so the same function runs in the service's own process or in a generation process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from musicgen_train.audio import encode_audio_bytes, load_audio
from musicgen_train.generation import GenerationEngine, GenerationParams
from musicgen_train.generation.long_form import plan
from musicgen_train.generation.rows import frames_for
from musicgen_train.generation.streaming import CodecStreamer, TokenFeed
from musicgen_train.serve.models import makes_long_form
from musicgen_train.serve.settings import StreamSettings
from musicgen_train.serve.streaming import to_pcm16

PROGRESS_SECONDS = 0.1  # progress events at most this often

# ("progress", fraction) or ("audio", job index, PCM bytes)
Emit = Callable[[tuple], None]
# None to go on, else why to stop: "canceled", "timeout" or "shutdown"
StopReason = Callable[[], str | None]


class GenerationAborted(Exception):
    """``generate`` was stopped on purpose; ``str(err)`` says why ("canceled", "timeout" ...)."""


class GenerationFailed(Exception):
    """The batch failed (or its models did not load); ``reason`` is what its clients read."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# Keys of a job's params that name uploaded audio (serve/uploads.py), not GenerationParams.
AUDIO_FIELDS = ("melody", "audio_prompt")


def generation_fields(params: dict) -> dict:
    """A job's params without its uploaded-audio ids: ``GenerationParams(**...)``'s fields."""
    return {key: value for key, value in params.items() if key not in AUDIO_FIELDS}


@dataclass(frozen=True)
class Batch:
    model: str
    prompts: list[str]
    params: dict  # GenerationParams fields, shared by every job of the batch
    formats: list[str]  # wav or flac, per job
    streamed: list[bool]  # whose PCM someone is listening to
    # A job that runs alone may carry audio: the uploaded files' bytes, decoded here as
    # ``musicgen-train generate`` reads melody= and audio_prompt= files.
    melody: bytes | None = None
    audio_prompt: bytes | None = None


@dataclass(frozen=True)
class Clip:
    """A job's result: its encoded file and length, or why encoding it failed."""

    data: bytes | None
    seconds: float
    error: str | None = None


class Checkpoint(StoppingCriteria):
    """Called by ``generate`` after every step: stops it with the reason ``stop_reason`` gives."""

    def __init__(self, stop_reason: StopReason):
        self.stop_reason = stop_reason

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        why = self.stop_reason()
        if why is not None:
            raise GenerationAborted(why)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def generate_batch(
    engine: GenerationEngine,
    batch: Batch,
    stream: StreamSettings,
    emit: Emit,
    stop_reason: StopReason,
) -> list[Clip]:
    """Generate the batch; raises ``GenerationAborted`` when ``stop_reason`` says so."""
    params = GenerationParams(**generation_fields(batch.params))
    audio_prompt = prompt_audio(engine, batch.audio_prompt)
    if is_long_form(engine, params):
        audio = _generate_long(engine, batch, params, stream, emit, stop_reason, audio_prompt)
        formats = zip(audio, batch.formats, strict=True)
        return [encode_clip(clip, engine.sample_rate, fmt) for clip, fmt in formats]
    frames = 0 if audio_prompt is None else -(-audio_prompt.shape[-1] // _hop(engine))
    streamer = _streamer(engine, batch, params, stream, emit, frames)
    criteria = StoppingCriteriaList([TokenFeed(streamer), Checkpoint(stop_reason)])
    audio = engine.generate(
        batch.prompts,
        params,
        stopping_criteria=criteria,
        audio_prompt=audio_prompt,
        melody=batch.melody,
    )
    streamer.end()
    emit(("progress", 1.0))
    formats = zip(audio, batch.formats, strict=True)
    return [encode_clip(clip, engine.sample_rate, fmt) for clip, fmt in formats]


def is_long_form(engine: GenerationEngine, params: GenerationParams) -> bool:
    """Longer than the window, where the engine makes long form (``serve.models``)."""
    return params.duration > engine.window_seconds + 1e-9 and makes_long_form(engine)


def _generate_long(
    engine, batch: Batch, params, stream: StreamSettings, emit: Emit, stop_reason, prompt
):
    """Long form: one decode loop per window, each continuing the last one's codes. A frame is
    final once complete (no later window rewrites it), so a stream hears the clip chunk by
    chunk as for one window (``long_form_codes``' ``on_codes``); stop requests and progress are
    checked at every row's step (``on_step``)."""
    hop = _hop(engine)
    frames = frames_for(params.duration, engine.loaded.frame_rate)
    prompt_frames = 0 if prompt is None else -(-prompt.shape[-1] // hop)
    windows = plan(
        frames,
        frames_for(engine.window_seconds, engine.loaded.frame_rate),
        frames_for(engine.extend_stride, engine.loaded.frame_rate),
        prompt_frames,
    )
    delay = int(engine.model.config.decoder.num_codebooks) - 1
    total = len(batch.prompts) * sum(new + delay for _, new in windows)
    done, last_progress = [0], [0.0]

    def on_step(row) -> None:
        why = stop_reason()
        if why is not None:
            raise GenerationAborted(why)
        done[0] += 1
        now = time.monotonic()
        if now - last_progress[0] >= PROGRESS_SECONDS:
            last_progress[0] = now
            emit(("progress", min(done[0] / total, 0.99)))

    streamer = None
    if any(batch.streamed):
        streamer = _streamer(engine, batch, params, stream, emit, prompt_frames)
    audio = engine.generate(
        batch.prompts,
        params,
        on_step=on_step,
        on_codes=None if streamer is None else streamer.put_frames,
        audio_prompt=prompt,
    )
    if streamer is not None:
        streamer.end()
    emit(("progress", 1.0))
    return audio


def prompt_audio(engine: GenerationEngine, data: bytes | None):
    """An uploaded audio prompt's bytes -> float ``[channels, samples]`` at the model's rate, as
    ``musicgen-train generate`` reads ``audio_prompt=`` files (None stays None). Both schedulers
    decode with it: a static batch of one here, a continuous row in ``continuous.Scheduler``."""
    if data is None:
        return None
    channels = int(engine.model.config.decoder.audio_channels)
    return load_audio(data, engine.sample_rate, channels)


def _hop(engine) -> int:
    return int(round(engine.sample_rate / engine.loaded.frame_rate))


def _streamer(
    engine, batch: Batch, params, stream: StreamSettings, emit: Emit, prompt_frames: int = 0
) -> CodecStreamer:
    """``prompt_frames``: an audio prompt's frames, which the ids (and the file) hold first."""
    frame_rate = engine.loaded.frame_rate
    num_codebooks = engine.model.config.decoder.num_codebooks
    max_new_tokens = params.generate_kwargs(frame_rate, num_codebooks)["max_new_tokens"]
    max_new_tokens += prompt_frames
    last_progress = [0.0]

    def on_audio(index: int, audio) -> None:
        if batch.streamed[index]:
            emit(("audio", index, to_pcm16(audio)))

    def on_progress(step: int, total: int) -> None:
        now = time.monotonic()
        if now - last_progress[0] >= PROGRESS_SECONDS:
            last_progress[0] = now
            emit(("progress", step / total))

    return CodecStreamer(
        engine.model,
        batch_size=len(batch.prompts),
        max_new_tokens=max_new_tokens,
        num_samples=int(round(params.duration * engine.sample_rate)) + prompt_frames * _hop(engine),
        on_audio=on_audio if any(batch.streamed) else None,
        on_progress=on_progress,
        chunk_frames=max(1, round(stream.chunk_seconds * frame_rate)),
        context_frames=round(stream.context_seconds * frame_rate),
        lookahead_frames=stream.lookahead_frames,
        crossfade_frames=min(2, stream.lookahead_frames),
        first_chunk_frames=max(1, round(stream.first_chunk_seconds * frame_rate)),
    )


def encode_clip(clip, sample_rate: int, fmt: str) -> Clip:
    """float ``[channels, samples]`` -> the job's file (or why encoding failed)."""
    seconds = clip.shape[-1] / sample_rate
    try:
        return Clip(encode_audio_bytes(clip, sample_rate, fmt), seconds)
    except Exception as err:  # one bad file must not cost the batch's other jobs
        return Clip(None, seconds, reason(err))


def reason(err: BaseException) -> str:
    """What a client reads in a failed job's ``error``."""
    if isinstance(err, GenerationFailed):
        return err.reason
    return f"{type(err).__name__}: {err}"[:500]
