"""The generation worker: claims queued jobs and runs them in a thread, off the event loop.

Queued jobs whose settings agree (same model, same ``GenerationParams.batch_key()``) share one
``GenerationEngine.generate`` call. Jobs with an explicit seed run alone, so that a seed always
gives the same audio. Each step of ``generate`` passes through a stopping criterion that
heartbeats progress into the store, publishes streamed audio, and aborts the call when every job
in it was canceled or the batch ran past its timeout.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable

import numpy as np
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from musicgen_train.data.audio import encode_audio_bytes
from musicgen_train.generation import GenerationParams
from musicgen_train.generation.streaming import CodecStreamer, TokenFeed
from musicgen_train.serve.jobs import RUNNING, Job, JobStore
from musicgen_train.serve.metrics import ServiceMetrics
from musicgen_train.serve.models import ServedModel
from musicgen_train.serve.settings import ServeSettings
from musicgen_train.serve.storage import AudioStore, audio_key
from musicgen_train.serve.streaming import StreamBroker, to_pcm16

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 0.25
RECOVERY_SECONDS = 5.0


class GenerationAborted(Exception):
    """Raised inside ``generate`` to stop it: every job was canceled, or time ran out."""


def job_params(job: Job) -> GenerationParams:
    return GenerationParams(**job.params)


def batch_key(job: Job) -> tuple:
    params = job_params(job)
    # A seeded job runs alone: its audio must not depend on which jobs shared its batch.
    alone = job.id if params.seed is not None else None
    return (job.model, params.batch_key(), alone)


class Supervisor(StoppingCriteria):
    """Called by ``generate`` after every step: heartbeats, cancellation, the timeout, and the
    server shutting down."""

    def __init__(
        self,
        store: JobStore,
        jobs: list[Job],
        deadline: float,
        on_tick: Callable,
        stopping: threading.Event,
    ):
        self.store, self.jobs, self.deadline, self.on_tick = store, jobs, deadline, on_tick
        self.stopping = stopping
        self.progress = 0.0
        self.canceled: set[str] = set()
        self.last_beat = 0.0

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        now = time.monotonic()
        if now - self.last_beat >= HEARTBEAT_SECONDS:
            self.last_beat = now
            self.beat()
        if now > self.deadline:
            raise GenerationAborted("timeout")
        if len(self.canceled) == len(self.jobs):
            raise GenerationAborted("canceled")
        if self.stopping.is_set():
            raise GenerationAborted("shutdown")
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def beat(self) -> None:
        live = [job.id for job in self.jobs if job.id not in self.canceled]
        statuses = self.store.status_of(live)
        for job_id in live:
            if statuses.get(job_id) != RUNNING:  # canceled (or taken away) meanwhile
                self.canceled.add(job_id)
            else:
                self.store.heartbeat(job_id, self.progress)
        self.on_tick()


class Worker:
    def __init__(
        self,
        settings: ServeSettings,
        store: JobStore,
        audio: AudioStore,
        models: dict[str, ServedModel],
        metrics: ServiceMetrics,
        broker: StreamBroker,
    ):
        self.settings, self.store, self.audio = settings, store, audio
        self.models, self.metrics, self.broker = models, metrics, broker
        self.id = f"worker-{uuid.uuid4().hex[:12]}"
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.last_tick = time.monotonic()

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self.recover()
        for index in range(self.settings.worker.threads):
            thread = threading.Thread(target=self._loop, name=f"generation-{index}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        self.wake.set()
        for thread in self.threads:
            thread.join(timeout)

    @property
    def alive(self) -> bool:
        return bool(self.threads) and all(t.is_alive() for t in self.threads)

    def recover(self) -> dict:
        jobs = self.settings.jobs
        outcome = self.store.recover_stale(jobs.stale_after, jobs.max_attempts, self.id)
        if outcome["requeued"] or outcome["failed"]:
            log.warning(
                "recovered orphaned jobs: %d re-queued, %d failed",
                len(outcome["requeued"]),
                len(outcome["failed"]),
            )
        return outcome

    # --- the loop --------------------------------------------------------------------------------

    def _loop(self) -> None:
        last_recovery = time.monotonic()
        while not self.stopping.is_set():
            self.last_tick = time.monotonic()
            if self.last_tick - last_recovery > RECOVERY_SECONDS:
                self.recover()
                last_recovery = self.last_tick
            try:
                batch = self.claim_batch()
            except Exception:  # a database hiccup must not kill the worker
                log.exception("claiming jobs failed")
                batch = []
            if batch:
                self.run_batch(batch)
            else:
                self.wake.wait(0.5)
                self.wake.clear()

    def claim_batch(self) -> list[Job]:
        """Claim the oldest queued job and the queued jobs that can share its generate call."""
        limit = self.settings.worker.max_batch_size
        queued = self.store.queued(limit=256)
        if not queued:
            return []
        if len(queued) < limit and self.settings.worker.batch_wait > 0:
            time.sleep(self.settings.worker.batch_wait)  # companions submitted together
            queued = self.store.queued(limit=256) or queued
        key = batch_key(queued[0])
        batch = []
        for job in queued:
            if len(batch) >= limit:
                break
            if job.model not in self.models:
                if self.store.claim(job.id, self.id):
                    self.store.fail(job.id, f"model {job.model!r} is not served by this server")
                continue
            if batch_key(job) == key and self.store.claim(job.id, self.id):
                batch.append(job)
        return batch

    def run_batch(self, jobs: list[Job]) -> None:
        served = self.models[jobs[0].model]
        params = job_params(jobs[0])
        started = time.monotonic()
        deadline = started + self.settings.jobs.timeout
        supervisor = Supervisor(self.store, jobs, deadline, self._tick, self.stopping)
        streamer = self._streamer(served, jobs, params, supervisor)
        self.metrics.active.inc(len(jobs))
        self.metrics.batch_size.observe(len(jobs))
        try:
            audio = served.engine.generate(
                [job.prompt for job in jobs],
                params,
                stopping_criteria=StoppingCriteriaList([TokenFeed(streamer), supervisor]),
            )
            streamer.end()
        except GenerationAborted as stop:
            self._abort(jobs, supervisor, str(stop))
            return
        except Exception as err:  # the reason goes to the client; the trace to the log
            log.exception("generation failed for %d job(s)", len(jobs))
            for job in jobs:
                self._finish(job, "failed", lambda j, e=err: self.store.fail(j.id, _reason(e)))
            return
        finally:
            self.metrics.active.dec(len(jobs))
            self.metrics.generation_seconds.labels(served.name).observe(time.monotonic() - started)
        for job, clip in zip(jobs, audio, strict=True):
            self._save(job, served, clip)

    def _tick(self) -> None:
        self.last_tick = time.monotonic()

    def _streamer(self, served, jobs, params, supervisor) -> CodecStreamer:
        frame_rate = served.engine.loaded.frame_rate
        num_codebooks = served.engine.model.config.decoder.num_codebooks
        kwargs = params.generate_kwargs(frame_rate, num_codebooks)
        live = {i: self.broker.get(job.id) for i, job in enumerate(jobs)}
        live = {i: stream for i, stream in live.items() if stream is not None}

        def on_audio(index: int, audio: np.ndarray) -> None:
            if index in live:
                live[index].publish(to_pcm16(audio))

        def on_progress(step: int, total: int) -> None:
            supervisor.progress = step / total

        stream = self.settings.stream
        return CodecStreamer(
            served.engine.model,
            batch_size=len(jobs),
            max_new_tokens=kwargs["max_new_tokens"],
            num_samples=int(round(params.duration * served.sample_rate)),
            on_audio=on_audio if live else None,
            on_progress=on_progress,
            chunk_frames=max(1, round(stream.chunk_seconds * frame_rate)),
            context_frames=round(stream.context_seconds * frame_rate),
            lookahead_frames=stream.lookahead_frames,
            crossfade_frames=min(2, stream.lookahead_frames),
        )

    def _save(self, job: Job, served: ServedModel, clip: np.ndarray) -> None:
        try:
            key = audio_key(job.id, job.format)
            self.audio.put(key, encode_audio_bytes(clip, served.sample_rate, job.format))
        except Exception as err:
            log.exception("storing audio of job %s failed", job.id)
            reason = _reason(err)
            self._finish(job, "failed", lambda j: self.store.fail(j.id, reason))
            return
        seconds = clip.shape[-1] / served.sample_rate
        if self._finish(job, "succeeded", lambda j: self.store.succeed(j.id, key, seconds)):
            self.metrics.audio_seconds.labels(served.name).inc(seconds)
        else:  # canceled while its batch finished: the audio is not wanted
            self.audio.delete(key)

    def _abort(self, jobs: list[Job], supervisor: Supervisor, why: str) -> None:
        timeout = self.settings.jobs.timeout
        for job in jobs:
            if why == "timeout":
                reason = f"timed out after {timeout:g} s (serve.jobs.timeout)"
                self._finish(job, "failed", lambda j, r=reason: self.store.fail(j.id, r))
            elif why == "shutdown":  # the next start (or another replica) runs it again
                self.store.requeue(job.id, "re-queued: the server shut down while generating")
                self.broker.close(job.id)
            else:  # the cancel request already set the status
                self.broker.close(job.id)

    def _finish(self, job: Job, status: str, change: Callable[[Job], bool]) -> bool:
        changed = change(job)
        if changed:
            self.metrics.jobs.labels(job.model, status).inc()
        self.broker.close(job.id)
        return changed


def _reason(err: Exception) -> str:
    return f"{type(err).__name__}: {err}"[:500]
