"""The worker's continuous-batching loop (``serve.worker.scheduler=continuous``), a part of
``Worker``: it keeps up to ``serve.worker.max_batch_size`` jobs running on its generator, claims a
queued job as soon as a row is free (it joins the decode batch at the next step), passes each
job's events on (progress, streamed PCM, its file), aborts the row of a canceled or timed-out job
(one row, never its companions), and re-queues what runs when the server stops.

A generation process that hangs (stuck in a native call, stopped, deadlocked) is killed, as under
static batching: when it sends nothing for ``serve.jobs.hang_after`` seconds while jobs run (each
step sends progress), or when a row it was told to stop (cancel, timeout) is still there
``ABORT_GRACE_SECONDS`` later. Its jobs fail with a reason that says so (a timed-out job with
its timeout reason); the worker starts a new process, as after a crash.
"""

from __future__ import annotations

import contextlib
import logging
import time

from musicgen_train.serve.batch import GenerationFailed
from musicgen_train.serve.continuous import JobSpec
from musicgen_train.serve.generator import ABORT_GRACE_SECONDS
from musicgen_train.serve.jobs import RUNNING, Job

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 0.25
RECOVERY_SECONDS = 5.0


class ContinuousLoop:
    """Methods of ``Worker`` (its store, metrics, broker, models, settings, ``_save``,
    ``_finish``, ``_abort``, ``_restart``, ``recover``, ``_uploads``)."""

    def _continuous(self, generator) -> None:
        """Keep the generator's batch full: claim jobs into free rows, pass events on, abort
        the rows of canceled and timed-out jobs; on shutdown re-queue what runs."""
        running: dict[str, _Running] = {}
        last_recovery = last_beat = heard = time.monotonic()  # heard: the child's last word
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
                if free > 0 and self._join(running, generator, free):
                    heard = time.monotonic()  # silence counts from the newest job's start
                if not running:
                    self.wake.wait(0.5)
                    self.wake.clear()
                    heard = time.monotonic()  # idle: nothing to hear
                    continue
                try:
                    events = generator.events(0.05)
                except GenerationFailed as err:
                    self._lost(running, generator, err.reason)
                    continue
                if events:
                    heard = time.monotonic()
                for event in events:
                    self._on_event(running, event)
                self._deadlines(running, generator)  # every turn: a timeout is one step late
                self._hung(running, generator, heard)
                if now - last_beat >= HEARTBEAT_SECONDS:
                    last_beat = now
                    self._beat(running, generator)
        finally:
            self._shutdown(running)

    def _join(self, running: dict, generator, free: int) -> int:
        """Claim up to ``free`` queued jobs into the batch; returns how many joined."""
        try:
            queued = self.store.queued(limit=free)
        except Exception:  # a database hiccup must not kill the worker
            log.exception("reading the queue failed")
            return 0
        joined = 0
        for job in queued:
            if job.model not in self.models:
                if self.store.claim(job.id, self.id):
                    self.store.fail(job.id, f"model {job.model!r} is not served by this server")
                continue
            if not self.store.claim(job.id, self.id):
                continue  # another worker took it
            try:  # a melody's and an audio prompt's files go with the job; its row reads them
                uploads = self._uploads(job)
            except GenerationFailed as err:
                self._finish(job, "failed", lambda j, r=err.reason: self.store.fail(j.id, r))
                continue
            live = self.broker.get(job.id)
            spec = JobSpec(
                job.id,
                job.model,
                job.prompt,
                job.params,
                job.format,
                live is not None,
                audio_prompt=uploads.get("audio_prompt"),
                melody=uploads.get("melody"),
            )
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
                return 0
        if joined:  # rows in the batch once these joined
            self.metrics.batch_size.observe(len(running))
        return joined

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

    def _deadlines(self, running: dict, generator) -> None:
        now = time.monotonic()
        for job_id, entry in running.items():
            if not entry.asked and now - entry.started > entry.timeout:
                self._ask(generator, entry, job_id, "timeout")

    @staticmethod
    def _ask(generator, entry: _Running, job_id: str, why: str) -> None:
        entry.asked, entry.asked_at = why, time.monotonic()
        with contextlib.suppress(GenerationFailed):  # the next turn sees a dead child
            generator.abort(job_id, why)

    def _hung(self, running: dict, generator, heard: float) -> None:
        """Kill a generation process that makes no progress; its jobs end with the reason."""
        if not running or not hasattr(generator, "kill"):  # a thread cannot be killed
            return
        now, limit = time.monotonic(), self.settings.jobs.hang_after
        ignored = [
            e for e in running.values() if e.asked and now - e.asked_at > ABORT_GRACE_SECONDS
        ]
        if ignored:
            why = (
                f"the generation process ignored a stop ({ignored[0].asked}) for "
                f"{ABORT_GRACE_SECONDS:g} s and was killed; it is being restarted"
            )
        elif now - heard > limit:
            why = (
                f"the generation process made no progress for {limit:g} s "
                "(serve.jobs.hang_after) and was killed; it is being restarted"
            )
        else:
            return
        log.error("%s (%d job(s) running)", why, len(running))
        generator.kill()
        for entry in list(running.values()):
            self.metrics.active.dec()
            if entry.asked in ("timeout", "canceled"):  # what it was stopped for
                self._abort([entry.job], entry.asked, entry.timeout)
            else:
                self._finish(entry.job, "failed", lambda j: self.store.fail(j.id, why))
        running.clear()

    def _beat(self, running: dict, generator) -> None:
        """Progress into the store; rows of canceled jobs leave the batch."""
        try:
            statuses = self.store.status_of(list(running))
        except Exception:
            log.exception("heartbeat failed")
            statuses = {}
        for job_id, entry in list(running.items()):
            if entry.asked:
                continue
            if statuses and statuses.get(job_id) != RUNNING:
                self._ask(generator, entry, job_id, "canceled")
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


class _Running:
    """A job in the continuous batch, as the worker sees it."""

    def __init__(self, job: Job, live, started: float, timeout: float):
        self.job, self.live, self.started, self.timeout = job, live, started, timeout
        self.progress = 0.0
        self.asked: str | None = None  # why an abort was sent for it
        self.asked_at = 0.0
