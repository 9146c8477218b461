"""Continuous batching: jobs join the running decode batch at the next step and leave it alone.

``Scheduler`` holds one ``DecodeLoop`` per served model (``GenerationEngine.new_loop``). A job
becomes one row of its model's loop (``engine.add``) with its own duration, seed, temperature,
top-k, top-p and guidance; every ``step`` advances every row by one token. A row leaves when its
own duration is reached (its audio is decoded and encoded at once) or when it is aborted
(canceled, timed out, the server stopping): only that row goes, its companions go on. Each row
has its own ``CodecStreamer``, so streaming and progress are per job; the streamers only mark
their chunk windows due, and after each step the due windows of all rows are decoded together
(``decode_due``: one codec call per window length, so streams that reach a chunk border at the
same step share it). A stream's first chunk is ``serve.stream.first_chunk_seconds`` long (the
later ones ``chunk_seconds``), so a listener hears audio after a few steps.

The scheduler is plain code over picklable inputs and outputs (``JobSpec`` in, events out), so it
runs in the generation process (``serve.worker.isolation=process``) or in a worker thread.

Events (tuples) handed to ``emit``:
``("job_progress", id, fraction)``, ``("job_audio", id, pcm16 bytes)``,
``("job_done", id, Clip)``, ``("job_failed", id, reason)``, ``("job_aborted", id, why)``.

A job may carry an audio prompt to continue (the uploaded file's bytes, decoded here with
``batch.prompt_audio`` as the static path decodes them): its row joins with the prompt's codec
codes as a prefix (``engine.add(audio_prompt=...)``; its first step writes the prompt's frames
into the cache in one forward, then it samples as any row). Its streamer and progress count the
prompt's frames too, and its file holds them re-synthesised by the codec, then ``duration``
seconds: what the static path and ``musicgen-train generate audio_prompt=...`` give. A melody
model's job joins the same way: its row's condition (the uploaded melody's chroma, or the null
chroma, then the text) is a prefix of its decoder input, prefilled at its first step.

A job longer than the model's window (long form, ``generation/long_form.py``) is a row per
window: when its row has made a window, the next joins the same loop, continuing the last
``window - extend_stride`` seconds of codes on the same random generator, as
``long_form_codes`` runs it alone; its companions step on meanwhile (a melody model's window
reads the melody from the window's start, ``melody.RowChroma``). One streamer follows the whole
clip: a frame is final once complete, since no later window rewrites it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from musicgen_train.generation import GenerationEngine, GenerationParams
from musicgen_train.generation.long_form import plan, report_final_frames
from musicgen_train.generation.melody import row_chroma
from musicgen_train.generation.rows import frames_for
from musicgen_train.generation.streaming import CodecStreamer, decode_due
from musicgen_train.serve.batch import (
    PROGRESS_SECONDS,
    Clip,
    encode_clip,
    generation_fields,
    is_long_form,
    prompt_audio,
    reason,
)
from musicgen_train.serve.settings import StreamSettings
from musicgen_train.serve.streaming import to_pcm16

log = logging.getLogger(__name__)

Emit = Callable[[tuple], None]


@dataclass(frozen=True)
class JobSpec:
    """What the generation side needs of a job."""

    id: str
    model: str
    prompt: str
    params: dict  # GenerationParams fields (and the ids of its uploads, ignored here)
    format: str  # wav or flac
    streamed: bool  # someone listens to its PCM
    audio_prompt: bytes | None = None  # the uploaded audio prompt's file, when it has one
    melody: bytes | None = None  # the uploaded melody's file (melody models)


class _Job:
    """A running job's bookkeeping: its row (one per window for long form), its streamer,
    progress and abort reason.

    The streamer is fed the clip's frames as they become final (``put_frames``): a row's frame is
    final once complete, and in long form no later window rewrites a frame, so one streamer
    follows the whole clip across the job's rows."""

    def __init__(self, spec: JobSpec, engine: GenerationEngine, stream: StreamSettings, emit):
        self.spec, self.engine, self.stream, self.emit = spec, engine, stream, emit
        self.params = GenerationParams(**generation_fields(spec.params))
        self.long = is_long_form(engine, self.params)
        self.stereo = engine.model.config.decoder.audio_channels == 2
        self.abort: str | None = None
        self.last_progress = 0.0
        self.num_samples = int(round(self.params.duration * engine.sample_rate))
        self.streamer: CodecStreamer | None = None  # sized once the first row joined
        self.row = None  # the engine's row of the window being made
        self.windows: list[tuple[int, int]] = []  # long form: (context, new frames) still to make
        self.codes: torch.Tensor | None = None  # the clip's codes of the windows made [K, F]
        self.offset = 0  # the clip frame of the row's first frame
        self.final = 0  # the clip's frames handed to the streamer
        # progress counts the rows' steps; a later window's forced context is not one
        self.steps_done = 0  # steps of the windows made
        self.steps_total = 0
        self.base = 0  # the row's step when it starts counting: its context's frames
        self.chroma = None  # a melody model's melody per window (melody.RowChroma)

    def join(self, loop, audio_prompt) -> None:
        """The job's first row joins ``loop`` (long form: its first window's); the streamer is
        sized for the whole clip (an audio prompt's frames first, in the stream and the file)."""
        engine, params = self.engine, self.params
        rate = engine.loaded.frame_rate
        delay = engine.num_codebooks - 1
        if not self.long:
            self.row = engine.add(
                loop,
                self.spec.prompt,
                params,
                on_step=self.on_step,
                should_stop=self.should_stop,
                tag=self.spec.id,
                audio_prompt=audio_prompt,
                melody=self.spec.melody,
            )
            forced = self.row.forced
            self.steps_total = self.row.total_steps
        else:  # long_form_codes' windows, one row each, on one generator
            prefix = None if audio_prompt is None else engine.prompt_codes(audio_prompt, params)
            forced = 0 if prefix is None else int(prefix.shape[-1])
            self.windows = plan(
                frames_for(params.duration, rate),
                frames_for(engine.window_seconds, rate),
                frames_for(engine.extend_stride, rate),
                forced,
            )
            self.steps_total = forced + sum(new + delay for _, new in self.windows)
            _, new = self.windows.pop(0)
            self.chroma = row_chroma(
                engine.loaded, 1, self.spec.melody, {}, engine.sample_rate, engine.window_seconds
            )
            self.row = loop.add_row(
                self.spec.prompt,
                engine.sampling(replace(params, duration=new / rate)),
                seed=params.seed,
                on_step=self.on_step,
                should_stop=self.should_stop,
                tag=self.spec.id,
                prefix=prefix,
                chroma=self.chroma.at(0)[0],
            )
        self.num_samples += forced * int(round(engine.sample_rate / rate))
        self.streamer = self._streamer(forced + frames_for(params.duration, rate) + delay)

    def _streamer(self, max_new_tokens: int) -> CodecStreamer:
        """The job's streamer, deferred (the scheduler decodes due windows of all rows at once);
        progress is the job's own (``on_step``), over all its windows."""
        stream, rate = self.stream, self.engine.loaded.frame_rate
        return CodecStreamer(
            self.engine.model,
            batch_size=1,
            max_new_tokens=max_new_tokens,
            num_samples=self.num_samples,
            on_audio=self._on_audio if self.spec.streamed else None,
            chunk_frames=max(1, round(stream.chunk_seconds * rate)),
            context_frames=round(stream.context_seconds * rate),
            lookahead_frames=stream.lookahead_frames,
            crossfade_frames=min(2, stream.lookahead_frames),
            first_chunk_frames=max(1, round(stream.first_chunk_seconds * rate)),
            defer=True,
        )

    def next_window(self, loop) -> bool:
        """The row finished its window: keep its codes; long form with windows still to make
        joins the next one (continuing the last ``context`` frames, on the same generator).
        False when the clip is complete."""
        row = self.row
        made = row.codes(self.stereo)  # a later window's first ``base`` frames: its context
        self.codes = (
            made if self.codes is None else torch.cat([self.codes, made[:, self.base :]], 1)
        )
        if not self.windows:
            return False
        self.steps_done += row.step - self.base
        context, new = self.windows.pop(0)
        self.offset, self.base = self.codes.shape[-1] - context, context
        self.row = loop.add_row(
            self.spec.prompt,
            self.engine.sampling(
                replace(self.params, duration=new / self.engine.loaded.frame_rate)
            ),
            generator=row.generator,
            on_step=self.on_step,
            should_stop=self.should_stop,
            tag=self.spec.id,
            prefix=self.codes[:, -context:],
            chroma=self.chroma.at(self.offset)[0],
        )
        return True

    def audio(self):
        """The clip's audio once every window is made: ``[channels, samples]``."""
        return self.engine.decode_codes(self.codes[None])[0][..., : self.num_samples]

    def should_stop(self) -> str | None:
        return self.abort

    def on_step(self, row) -> None:
        """The frames the step completed, to the streamer (a prompted row's first step: its
        prompt's frames too, so the deferred streamer marks one window due that holds them)."""
        self.final = report_final_frames(
            [row], self.stereo, self.offset, self.final, self.streamer.put_frames
        )
        now = time.monotonic()
        if now - self.last_progress >= PROGRESS_SECONDS:
            self.last_progress = now
            made = self.steps_done + row.step - self.base
            self.emit(("job_progress", self.spec.id, min(made / self.steps_total, 1.0)))

    def _on_audio(self, _index: int, audio) -> None:
        self.emit(("job_audio", self.spec.id, to_pcm16(audio)))


class Scheduler:
    """The running batch of every served model; ``add``, ``abort`` and ``step``."""

    def __init__(
        self,
        engines: dict[str, GenerationEngine],
        stream: StreamSettings,
        emit: Emit,
        max_rows: int = 8,
    ):
        self.engines, self.stream, self.emit, self.max_rows = engines, stream, emit, max_rows
        self.loops = {}
        self.jobs: dict[str, _Job] = {}
        self.steps = 0  # steps taken, all models together
        self.rows_stepped = 0  # rows advanced, all steps together (rows per step = this / steps)
        self.codec_calls = 0  # codec decodes for streamed chunks, all rows together

    @property
    def busy(self) -> bool:
        return bool(self.jobs)

    @property
    def free(self) -> int:
        return max(0, self.max_rows - len(self.jobs))

    def add(self, spec: JobSpec) -> bool:
        """Put a job into its model's running batch (it advances at the next step); a job that
        cannot run fails alone with the reason."""
        loop = job = None
        try:
            engine = self.engines[spec.model]
            job = _Job(spec, engine, self.stream, self.emit)
            audio_prompt = prompt_audio(engine, spec.audio_prompt)
            loop = self.loops.get(spec.model)
            if loop is None:
                loop = self.loops[spec.model] = engine.new_loop()
            job.join(loop, audio_prompt)
        except Exception as err:
            if job is not None and job.row is not None:  # it joined, then failed: it must not
                loop.remove([job.row])  # run without its job
            log.exception("job %s could not join the batch", spec.id)
            self.emit(("job_failed", spec.id, reason(err)))
            return False
        self.jobs[spec.id] = job
        return True

    def abort(self, job_id: str, why: str) -> None:
        """The row leaves before the next step; its companions go on."""
        job = self.jobs.get(job_id)
        if job is not None and job.abort is None:
            job.abort = why

    def abort_all(self, why: str) -> None:
        for job_id in list(self.jobs):
            self.abort(job_id, why)

    def step(self) -> None:
        """One decode step of every model's running batch; finished rows leave and are sent."""
        for model, loop in list(self.loops.items()):
            if not loop.rows:
                continue
            size = len(loop.rows)
            try:
                left = loop.step()
            except Exception as err:  # the whole batch of this model failed (out of memory ...)
                log.exception("a decode step of model %s failed", model)
                self._fail_model(model, reason(err))
                continue
            if size:
                self.steps += 1
                self.rows_stepped += size
            self._decode_due(model)
            for row in left:
                self._leave(loop, row)

    def _decode_due(self, model: str) -> None:
        """The chunks that became due at this step, for every row of ``model``, decoded
        together; a failure there fails the rows that had a chunk due (alone)."""
        due = [j for j in self.jobs.values() if j.spec.model == model and j.streamer.due]
        if not due:
            return
        try:
            self.codec_calls += decode_due([job.streamer for job in due])
        except Exception as err:
            log.exception("decoding streamed audio of model %s failed", model)
            for job in due:
                if job.streamer.due is not None:
                    self.jobs.pop(job.spec.id, None)
                    self.loops[model].remove([job.row])
                    self.emit(("job_failed", job.spec.id, reason(err)))

    def _fail_model(self, model: str, why: str) -> None:
        self.loops[model] = self.engines[model].new_loop()
        for job_id, job in list(self.jobs.items()):
            if job.spec.model == model:
                del self.jobs[job_id]
                self.emit(("job_failed", job_id, why))

    def _leave(self, loop, row) -> None:
        """A row left: aborted, or its window is made (long form: the job's next window joins
        ``loop``), or its job is complete: decoded, encoded and sent."""
        job = self.jobs.get(row.tag)
        if job is None:
            return
        if row.stop_reason is not None:
            del self.jobs[row.tag]
            self.emit(("job_aborted", job.spec.id, row.stop_reason))
            return
        try:
            if job.next_window(loop):
                return
            job.streamer.end()
            clip = encode_clip(job.audio(), job.engine.sample_rate, job.spec.format)
        except Exception as err:
            log.exception("finishing job %s failed", job.spec.id)
            del self.jobs[row.tag]
            self.emit(("job_failed", job.spec.id, reason(err)))
            return
        del self.jobs[row.tag]
        self.emit(("job_progress", job.spec.id, 1.0))
        self.emit(("job_done", job.spec.id, clip))


def collect() -> tuple[list[tuple], Emit]:
    """A list and an ``emit`` that appends to it (the in-process scheduler's event sink)."""
    events: list[tuple] = []
    return events, events.append


__all__ = ["Clip", "JobSpec", "Scheduler", "collect"]
