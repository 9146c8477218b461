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

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable

from musicgen_train.generation import GenerationParams
from musicgen_train.serve.batch import Batch, Clip, GenerationAborted, GenerationFailed, reason
from musicgen_train.serve.continuous import JobSpec
from musicgen_train.serve.jobs import RUNNING, Job, JobStore
from musicgen_train.serve.metrics import ServiceMetrics
from musicgen_train.serve.models import ServedModel
from musicgen_train.serve.settings import ServeSettings
from musicgen_train.serve.storage import AudioStore, audio_key
from musicgen_train.serve.streaming import StreamBroker

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 0.25
RECOVERY_SECONDS = 5.0
RESTART_DELAY_SECONDS = 10.0  # between attempts to bring a failed generator back


def batch_key(job: Job) -> tuple:
    params = GenerationParams(**job.params)
    # A seeded job runs alone: its audio must not depend on which jobs shared its batch.
    alone = job.id if params.seed is not None else None
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

    # --- continuous batching ---------------------------------------------------------------------

    def _continuous(self, generator) -> None:
        """Keep the generator's batch full: claim jobs into free rows, pass events on, abort
        the rows of canceled and timed-out jobs; on shutdown re-queue what runs."""
        running: dict[str, _Running] = {}
        last_recovery = last_beat = time.monotonic()
        try:
            while not self.stopping.is_set():
                now = self.last_tick = time.monotonic()
                if not generator.alive:
                    self._lost(running, generator)
                    self._restart(generator)
                    continue
                if now - last_recovery > RECOVERY_SECONDS:
                    self.recover()
                    last_recovery = now
                free = self.settings.worker.max_batch_size - len(running)
                if free > 0:
                    self._join(running, generator, free)
                if not running:
                    self.wake.wait(0.5)
                    self.wake.clear()
                    continue
                try:
                    events = generator.events(0.05)
                except GenerationFailed as err:
                    self._lost(running, generator, err.reason)
                    continue
                for event in events:
                    self._on_event(running, event)
                if now - last_beat >= HEARTBEAT_SECONDS:
                    last_beat = now
                    self._beat(running, generator)
        finally:
            self._shutdown(running)

    def _join(self, running: dict, generator, free: int) -> None:
        try:
            queued = self.store.queued(limit=free)
        except Exception:  # a database hiccup must not kill the worker
            log.exception("reading the queue failed")
            return
        joined = 0
        for job in queued:
            if job.model not in self.models:
                if self.store.claim(job.id, self.id):
                    self.store.fail(job.id, f"model {job.model!r} is not served by this server")
                continue
            if not self.store.claim(job.id, self.id):
                continue  # another worker took it
            live = self.broker.get(job.id)
            spec = JobSpec(job.id, job.model, job.prompt, job.params, job.format, live is not None)
            duration = float(job.params.get("duration", 0.0))
            running[job.id] = _Running(
                job, live, time.monotonic(), self.settings.jobs.timeout_for(duration)
            )
            self.metrics.active.inc()
            joined += 1
            try:
                generator.submit(spec)
            except GenerationFailed as err:
                self._lost(running, generator, err.reason)
                return
        if joined:  # rows in the batch once these joined
            self.metrics.batch_size.observe(len(running))

    def _on_event(self, running: dict, event: tuple) -> None:
        kind, job_id, payload = event[0], event[1], event[2]
        entry = running.get(job_id)
        if entry is None:
            return
        if kind == "job_progress":
            entry.progress = payload
        elif kind == "job_audio":
            if entry.live is not None:
                entry.live.publish(payload)
        else:
            del running[job_id]
            self._ended(entry, kind, payload)

    def _ended(self, entry: _Running, kind: str, payload) -> None:
        job = entry.job
        self.metrics.active.dec()
        served = self.models[job.model]
        self.metrics.generation_seconds.labels(served.name).observe(
            time.monotonic() - entry.started
        )
        if kind == "job_done":
            self._save(job, served, payload)
        elif kind == "job_failed":
            self._finish(job, "failed", lambda j, r=payload: self.store.fail(j.id, r))
        elif kind == "job_aborted":
            self._abort([job], payload, entry.timeout)

    def _beat(self, running: dict, generator) -> None:
        """Progress into the store; rows of canceled or timed-out jobs leave the batch."""
        now = time.monotonic()
        try:
            statuses = self.store.status_of(list(running))
        except Exception:
            log.exception("heartbeat failed")
            statuses = {}
        for job_id, entry in list(running.items()):
            if entry.asked:
                continue
            why = None
            if statuses and statuses.get(job_id) != RUNNING:
                why = "canceled"
            elif now - entry.started > entry.timeout:
                why = "timeout"
            if why is not None:
                entry.asked = True
                with contextlib.suppress(GenerationFailed):  # next turn sees the dead child
                    generator.abort(job_id, why)
                continue
            try:
                self.store.heartbeat(job_id, entry.progress)
            except Exception:
                log.exception("heartbeat failed")
        self._tick()

    def _lost(self, running: dict, generator, why: str | None = None) -> None:
        """The generation process died: its jobs fail with the reason (as a static batch's)."""
        if not running:
            return
        if why is None:
            why = generator._crashed().reason if hasattr(generator, "_crashed") else "lost"
        for entry in list(running.values()):
            self.metrics.active.dec()
            self._finish(entry.job, "failed", lambda j: self.store.fail(j.id, why))
        running.clear()

    def _shutdown(self, running: dict) -> None:
        for entry in running.values():
            self.metrics.active.dec()
            self.store.requeue(entry.job.id, "re-queued: the server shut down while generating")
            self.broker.close(entry.job.id)
        running.clear()

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

    def run_batch(self, jobs: list[Job], generator) -> None:
        served = self.models[jobs[0].model]
        live = [self.broker.get(job.id) for job in jobs]  # streams someone is reading
        batch = Batch(
            model=served.name,
            prompts=[job.prompt for job in jobs],
            params=jobs[0].params,
            formats=[job.format for job in jobs],
            streamed=[stream is not None for stream in live],
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


class _Running:
    """A job in the continuous batch, as the worker sees it."""

    def __init__(self, job: Job, live, started: float, timeout: float):
        self.job, self.live, self.started, self.timeout = job, live, started, timeout
        self.progress = 0.0
        self.asked = False  # an abort was sent for it
