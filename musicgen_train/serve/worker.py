"""The generation worker: claims queued jobs and hands them to a generator, off the event loop.

Two schedulers (``serve.worker.scheduler``):

- ``continuous`` (the default): the worker keeps up to ``max_batch_size`` jobs running on its
  generator. A queued job is claimed as soon as a row is free and joins the running decode batch
  at the next step (``continuous.Scheduler``); each job leaves when its own duration is reached.
  Cancel, timeout (per job, ``serve.jobs.timeout_for``) and shutdown abort one row at a time.
- ``static``: queued jobs whose settings agree (same model, same
  ``GenerationParams.batch_key()``) share one ``generate`` call that runs to its end. Jobs with
  an explicit seed run alone, so that a seed always gives the same audio. While a batch runs,
  its ``Monitor`` heartbeats progress into the store, notices canceled jobs, and stops the
  batch when every job in it was canceled, it ran past its timeout, or the server is stopping.

Each worker thread has its own generator (see ``generator.py``).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable

from musicgen_train.generation import GenerationParams
from musicgen_train.serve.batch import (
    AUDIO_FIELDS,
    Batch,
    Clip,
    GenerationAborted,
    GenerationFailed,
    generation_fields,
    reason,
)
from musicgen_train.serve.jobs import RUNNING, Job, JobStore
from musicgen_train.serve.metrics import ServiceMetrics
from musicgen_train.serve.models import ServedModel
from musicgen_train.serve.settings import ServeSettings
from musicgen_train.serve.storage import AudioStore, audio_key
from musicgen_train.serve.streaming import StreamBroker
from musicgen_train.serve.worker_continuous import (
    HEARTBEAT_SECONDS,
    RECOVERY_SECONDS,
    ContinuousLoop,
)

log = logging.getLogger(__name__)

RESTART_DELAY_SECONDS = 10.0  # between attempts to bring a failed generator back


def batch_key(job: Job, conditioned: bool = False) -> tuple:
    params = GenerationParams(**generation_fields(job.params))
    # A seeded job runs alone: its audio must not depend on which jobs shared its batch. So
    # does a conditioned one (``Worker.conditioned``): its audio is its own.
    alone = job.id if params.seed is not None or conditioned else None
    return (job.model, params.batch_key(), alone)


class Monitor:
    """The service's side of a running batch; ``stop_reason`` is asked after every step (or,
    with a generation process, every ``POLL_SECONDS``) whether to stop."""

    def __init__(self, store: JobStore, jobs: list[Job], deadline: float, stopping, on_beat):
        self.store, self.jobs, self.deadline = store, jobs, deadline
        self.stopping, self.on_beat = stopping, on_beat
        self.progress = 0.0
        self.canceled: set[str] = set()
        self.last_beat = 0.0

    def stop_reason(self) -> str | None:
        now = time.monotonic()
        if now - self.last_beat >= HEARTBEAT_SECONDS:
            self.last_beat = now
            self.beat()
        if now > self.deadline:
            return "timeout"
        if len(self.canceled) == len(self.jobs):
            return "canceled"
        if self.stopping.is_set():
            return "shutdown"
        return None

    def beat(self) -> None:
        try:
            self._beat()
        except Exception:  # a database hiccup must not cost the generation; the next beat retries
            log.exception("heartbeat failed")

    def _beat(self) -> None:
        live = [job.id for job in self.jobs if job.id not in self.canceled]
        statuses = self.store.status_of(live)
        for job_id in live:
            if statuses.get(job_id) != RUNNING:  # canceled (or taken away) meanwhile
                self.canceled.add(job_id)
            else:
                self.store.heartbeat(job_id, self.progress)
        self.on_beat()


class Worker(ContinuousLoop):
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
        self.generators: list = []
        self.last_tick = time.monotonic()

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self, generators: list) -> None:
        """One thread per generator, each running one batch at a time on its generator."""
        self.recover()
        self.generators = generators
        loop = self._loop if self.settings.worker.scheduler == "static" else self._continuous
        for index, generator in enumerate(generators):
            thread = threading.Thread(
                target=loop, args=(generator,), name=f"generation-{index}", daemon=True
            )
            thread.start()
            self.threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        self.wake.set()
        for thread in self.threads:
            thread.join(timeout)
        for generator in set(self.generators):
            generator.stop()

    @property
    def alive(self) -> bool:
        return (
            bool(self.threads)
            and all(thread.is_alive() for thread in self.threads)
            and all(generator.ready for generator in self.generators)
        )

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

    def _loop(self, generator) -> None:
        last_recovery = time.monotonic()
        while not self.stopping.is_set():
            self.last_tick = time.monotonic()
            if not generator.alive:
                self._restart(generator)
                continue
            if self.last_tick - last_recovery > RECOVERY_SECONDS:
                self.recover()
                last_recovery = self.last_tick
            try:
                batch = self.claim_batch()
            except Exception:  # a database hiccup must not kill the worker
                log.exception("claiming jobs failed")
                batch = []
            if batch:
                self.run_batch(batch, generator)
            else:
                self.wake.wait(0.5)
                self.wake.clear()

    def _restart(self, generator) -> None:
        log.warning("restarting the generation process")
        self.metrics.generator_restarts.inc()
        try:
            generator.start()
        except Exception as err:
            log.error("the generation process did not start: %s", err)
            self.stopping.wait(RESTART_DELAY_SECONDS)

    def claim_batch(self) -> list[Job]:
        """Claim the oldest queued job and the queued jobs that can share its generate call."""
        limit = self.settings.worker.max_batch_size
        queued = self.store.queued(limit=256)
        if not queued:
            return []
        if len(queued) < limit and self.settings.worker.batch_wait > 0:
            time.sleep(self.settings.worker.batch_wait)  # companions submitted together
            queued = self.store.queued(limit=256) or queued
        key = batch_key(queued[0], self.conditioned(queued[0]))
        batch = []
        for job in queued:
            if len(batch) >= limit:
                break
            if job.model not in self.models:
                if self.store.claim(job.id, self.id):
                    self.store.fail(job.id, f"model {job.model!r} is not served by this server")
                continue
            if batch_key(job, self.conditioned(job)) == key and self.store.claim(job.id, self.id):
                batch.append(job)
        return batch

    def conditioned(self, job: Job) -> bool:
        """A job with a melody or an audio prompt, or one longer than the model's window (long
        form): under static batching a batch of its own (its audio is its own; a ``Batch``
        carries one job's uploads)."""
        served = self.models.get(job.model)
        long = served is not None and served.is_long(float(job.params.get("duration", 0.0)))
        return long or any(job.params.get(f) for f in AUDIO_FIELDS)

    def _uploads(self, job: Job) -> dict:
        """The bytes of the job's uploaded audio (``serve/uploads.py``): its owner's uploads, or
        one kept before uploads had owners (the job's creation checked that it may use it)."""
        out = {}
        for field in AUDIO_FIELDS:
            if job.params.get(field):
                data = self.audio.get_upload(job.params[field], job.owner)
                if data is None and job.owner is not None:
                    data = self.audio.get_upload(job.params[field])
                if data is None:
                    raise GenerationFailed(f"the {field} upload {job.params[field]} is gone")
                out[field] = data
        return out

    def run_batch(self, jobs: list[Job], generator) -> None:
        served = self.models[jobs[0].model]
        live = [self.broker.get(job.id) for job in jobs]  # streams someone is reading
        try:
            uploads = self._uploads(jobs[0]) if len(jobs) == 1 else {}
        except GenerationFailed as err:
            self._finish(jobs[0], "failed", lambda j, r=err.reason: self.store.fail(j.id, r))
            return
        batch = Batch(
            model=served.name,
            prompts=[job.prompt for job in jobs],
            params=jobs[0].params,
            formats=[job.format for job in jobs],
            streamed=[stream is not None for stream in live],
            **uploads,
        )
        started = time.monotonic()
        timeout = self.settings.jobs.timeout_for(float(jobs[0].params.get("duration", 0.0)))
        deadline = started + timeout
        monitor = Monitor(self.store, jobs, deadline, self.stopping, self._tick)

        def on_event(event: tuple) -> None:
            if event[0] == "progress":
                monitor.progress = event[1]
            elif event[0] == "audio" and live[event[1]] is not None:
                live[event[1]].publish(event[2])

        self.metrics.active.inc(len(jobs))
        self.metrics.batch_size.observe(len(jobs))
        try:
            clips = generator.run(batch, on_event, monitor.stop_reason)
        except GenerationAborted as stop:
            self._abort(jobs, str(stop), timeout)
            return
        except Exception as err:  # GenerationFailed, or the service's own side failing
            if not isinstance(err, GenerationFailed):
                log.exception("running a batch of %d job(s) failed", len(jobs))
            for job in jobs:
                self._finish(job, "failed", lambda j, r=reason(err): self.store.fail(j.id, r))
            return
        finally:
            self.metrics.active.dec(len(jobs))
            self.metrics.generation_seconds.labels(served.name).observe(time.monotonic() - started)
        for job, clip in zip(jobs, clips, strict=True):
            self._save(job, served, clip)

    def _tick(self) -> None:
        self.last_tick = time.monotonic()

    def _save(self, job: Job, served: ServedModel, clip: Clip) -> None:
        if clip.error is not None:
            self._finish(job, "failed", lambda j: self.store.fail(j.id, clip.error))
            return
        try:
            key = audio_key(job.id, job.format)
            self.audio.put(key, clip.data)
        except Exception as err:
            log.exception("storing audio of job %s failed", job.id)
            self._finish(job, "failed", lambda j, r=reason(err): self.store.fail(j.id, r))
            return
        if self._finish(job, "succeeded", lambda j: self.store.succeed(j.id, key, clip.seconds)):
            self.metrics.audio_seconds.labels(served.name).inc(clip.seconds)
        else:  # canceled while its batch finished: the audio is not wanted
            self.audio.delete(key)

    def _abort(self, jobs: list[Job], why: str, timeout: float) -> None:
        for job in jobs:
            if why == "timeout":
                reason = (
                    f"timed out after {timeout:g} s (serve.jobs.timeout + "
                    "serve.jobs.timeout_per_audio_second x duration)"
                )
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
