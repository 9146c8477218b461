"""Where generation runs: in the service's own process (a thread) or in a generation process.

Both generators offer the two schedulers' interfaces (``serve.worker.scheduler``):

- continuous: ``submit(JobSpec)``, ``abort(job_id, why)`` and ``events(timeout)``; a
  ``continuous.Scheduler`` holds the running decode batch and sends events per job.
- static: ``run(batch, emit, stop_reason)`` with ``batch.generate_batch`` (one ``generate`` call).

- ``ProcessGenerator`` (``serve.worker.isolation: process``, the default) loads the models in a
  child process and talks to it over a pipe. The sampling loop is Python code that holds the GIL
  between torch ops; in a thread it makes every HTTP request wait for its turn, in a child
  process it cannot. A child that dies (out of memory, a crash) fails its jobs with the reason
  and is started again; it counts as ready only once it has loaded its models. It ignores
  SIGINT and SIGTERM (sent to the whole process group by Ctrl-C and by supervisors): the service
  re-queues the running jobs and then stops it over the pipe.
- ``InlineGenerator`` (``isolation: thread``, or models handed to ``create_app`` already loaded,
  as tests and notebooks do) runs in the calling worker thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time

import torch

from musicgen_train.generation import GenerationEngine
from musicgen_train.serve.adapters import load_engines
from musicgen_train.serve.batch import (
    Batch,
    Clip,
    Emit,
    GenerationAborted,
    GenerationFailed,
    StopReason,
    generate_batch,
    reason,
)
from musicgen_train.serve.continuous import JobSpec, Scheduler, collect
from musicgen_train.serve.models import ModelFacts
from musicgen_train.serve.process_start import start_context, start_fork_server
from musicgen_train.serve.settings import ModelSpec, StreamSettings

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1  # how often the service checks cancellation while it waits for events
ABORT_GRACE_SECONDS = 30.0  # a child that ignores an abort this long is killed


class InlineGenerator:
    """Runs batches in the calling thread, on engines loaded in this process."""

    def __init__(
        self,
        engines: dict[str, GenerationEngine],
        stream: StreamSettings,
        torch_threads: int | None = None,
        max_rows: int = 8,
    ):
        self.engines, self.stream, self.torch_threads = engines, stream, torch_threads
        self._events, emit = collect()
        self.scheduler = Scheduler(engines, stream, emit, max_rows)

    alive = True
    ready = True

    # --- continuous batching: the calling (worker) thread steps the scheduler -----------------

    def submit(self, spec: JobSpec) -> None:
        self.scheduler.add(spec)

    def abort(self, job_id: str, why: str) -> None:
        self.scheduler.abort(job_id, why)

    def events(self, timeout: float) -> list[tuple]:
        """One decode step (when rows run) and the events it made."""
        if self.scheduler.busy:
            try:
                self.scheduler.step()
            except Exception as err:  # the scheduler's own failure: every row fails with it
                log.exception("a decode step failed")
                for job_id in list(self.scheduler.jobs):
                    self._events.append(("job_failed", job_id, reason(err)))
                self.scheduler.jobs.clear()
                self.scheduler.loops.clear()
        elif not self._events:
            time.sleep(timeout)
        out = list(self._events)
        self._events.clear()
        return out

    def start(self) -> dict[str, ModelFacts]:
        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        return {name: ModelFacts.of(engine) for name, engine in self.engines.items()}

    def run(self, batch: Batch, emit: Emit, stop_reason: StopReason) -> list[Clip]:
        try:
            return generate_batch(self.engines[batch.model], batch, self.stream, emit, stop_reason)
        except GenerationAborted:
            raise
        except Exception as err:  # the reason goes to the clients; the trace to the log
            log.exception("generation failed for %d job(s)", len(batch.prompts))
            raise GenerationFailed(reason(err)) from err

    def stop(self, timeout: float = 10.0) -> None:
        pass


class ProcessGenerator:
    """Runs batches in a child process that loads the models itself."""

    def __init__(
        self,
        specs: list[ModelSpec],
        stream: StreamSettings,
        *,
        device: str = "cpu",
        torch_threads: int | None = None,
        nice: int = 0,
        precision: str | None = None,
        max_rows: int = 8,
    ):
        self.specs, self.stream, self.device = specs, stream, device
        self.torch_threads, self.nice = torch_threads, nice
        self.precision, self.max_rows = precision, max_rows
        self.process = None
        self.conn = None
        self.loaded = False  # the current child has answered "ready": its models are loaded

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    @property
    def ready(self) -> bool:
        """Alive and done loading: a replacement child that is still loading is not ready."""
        return self.loaded and self.alive

    def start(self) -> dict[str, ModelFacts]:
        """Start the child and wait until it has loaded every model; raises
        ``GenerationFailed`` with the child's reason when it cannot."""
        self.stop()
        self.loaded = False
        context = start_context()
        start_fork_server()  # again if it died: multiprocessing's own restart would take SIGTERM
        self.conn, child_end = context.Pipe()
        self.process = context.Process(
            target=child_main,
            args=(
                child_end,
                self.specs,
                self.stream,
                self.device,
                self.torch_threads,
                self.nice,
                self.precision,
                self.max_rows,
            ),
            name="musicgen-generation",
            daemon=True,
        )
        self.process.start()
        child_end.close()  # so that the child's death reads as EOF here
        try:
            kind, payload = self.conn.recv()
        except EOFError:
            self.process.join(5)
            why = f"the generation process exited ({self._exit()}) while loading"
            raise GenerationFailed(why) from None
        if kind != "ready":
            self.stop()
            raise GenerationFailed(payload)
        log.info("generation process %d is ready", self.process.pid)
        self.loaded = True
        return payload

    def run(self, batch: Batch, emit: Emit, stop_reason: StopReason) -> list[Clip]:
        self._send(("run", batch))
        try:
            return self._follow(emit, stop_reason)
        except (GenerationAborted, GenerationFailed):
            raise
        except BaseException:
            # The service's side failed mid-batch: a child left generating would answer the
            # next batch with this one's results.
            self.kill()
            raise

    # --- continuous batching: jobs go to the child one by one, events come back per job -------

    def submit(self, spec: JobSpec) -> None:
        self._send(("add", spec))

    def abort(self, job_id: str, why: str) -> None:
        self._send(("abort_job", job_id, why))

    def events(self, timeout: float) -> list[tuple]:
        """The child's events so far, waiting up to ``timeout`` for the first."""
        out = []
        try:
            if self.conn.poll(timeout):
                while self.conn.poll():
                    out.append(self.conn.recv())
                    if len(out) >= 1000:
                        break
        except (EOFError, OSError):
            raise self._crashed() from None
        return out

    def _follow(self, emit: Emit, stop_reason: StopReason) -> list[Clip]:
        """Pass the child's events on until its batch ends; ask it to stop when told to."""
        asked, asked_at = None, 0.0
        while True:
            if self._poll():
                kind, *payload = self._receive()
                if kind == "done":
                    return payload[0]
                if kind == "aborted":
                    raise GenerationAborted(payload[0])
                if kind == "failed":
                    raise GenerationFailed(payload[0])
                emit((kind, *payload))  # progress or audio
            why = stop_reason()
            if why is not None and asked is None:
                self._send(("abort", why))
                asked, asked_at = why, time.monotonic()
            if asked is not None and time.monotonic() - asked_at > ABORT_GRACE_SECONDS:
                log.error("the generation process ignored a stop for %gs", ABORT_GRACE_SECONDS)
                self.kill()
                raise GenerationAborted(asked)

    def stop(self, timeout: float = 10.0) -> None:
        self.loaded = False
        if self.process is None:
            return
        with contextlib.suppress(OSError):
            self.conn.send(("stop",))
        self.process.join(timeout)
        if self.process.is_alive():
            self.kill()
        self.conn.close()
        self.process = None

    def kill(self) -> None:
        self.loaded = False
        self.process.kill()
        self.process.join(10)

    # --- the pipe; a dead child becomes GenerationFailed ------------------------------------

    def _crashed(self) -> GenerationFailed:
        self.process.join(5)
        return GenerationFailed(
            f"the generation process died ({self._exit()}); it is being restarted"
        )

    def _exit(self) -> str:
        code = self.process.exitcode
        if code is not None and code < 0:
            return f"signal {signal.Signals(-code).name}"
        return f"exit code {code}"

    def _send(self, message: tuple) -> None:
        try:
            self.conn.send(message)
        except OSError:
            raise self._crashed() from None

    def _poll(self) -> bool:
        try:
            return self.conn.poll(POLL_SECONDS)
        except OSError:
            raise self._crashed() from None

    def _receive(self) -> tuple:
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            raise self._crashed() from None


# --- the child process -------------------------------------------------------------------------


class _ServiceLink:
    """The child's end of the pipe. When the service is gone there is nobody to generate for:
    the child exits (``SystemExit`` passes through ``generate`` untouched)."""

    def __init__(self, conn):
        self.conn = conn
        self.stopping = False  # the service asked the child to exit

    def send(self, message: tuple) -> None:
        try:
            self.conn.send(message)
        except OSError:
            raise SystemExit(0) from None

    def receive(self) -> tuple:
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            raise SystemExit(0) from None

    def stop_reason(self) -> str | None:
        """Called after every step: an abort the service sent meanwhile, if any."""
        try:
            while self.conn.poll():
                message = self.receive()
                if message[0] == "abort":
                    return message[1]
                if message[0] == "stop":
                    self.stopping = True
                    return "shutdown"
        except OSError:
            raise SystemExit(0) from None
        return None


def child_main(
    conn, specs, stream, device, torch_threads, nice, precision=None, max_rows=8
) -> None:
    from musicgen_train.logs import setup_logging

    # Ctrl-C (SIGINT) and a supervisor's stop (systemd, docker, many others send SIGTERM to the
    # whole process group) reach this child too; the service stops it over the pipe, after it
    # has re-queued the running jobs. A service that died outright closes the pipe: EOF, exit.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # the fork server's block
    setup_logging()
    if nice:
        os.nice(nice)
    if torch_threads:
        torch.set_num_threads(torch_threads)
    link = _ServiceLink(conn)
    try:
        engines = load_engines(specs, device, precision, torch_threads)
    except Exception as err:
        link.send(("load_failed", reason(err)))
        return
    link.send(("ready", {name: ModelFacts.of(engine) for name, engine in engines.items()}))
    scheduler = Scheduler(engines, stream, link.send, max_rows)
    while not link.stopping:
        if scheduler.busy:  # continuous batching: take what arrived, then one step
            if not _take_messages(link, scheduler):
                return
            scheduler.step()
            continue
        message = link.receive()
        if message[0] == "stop":
            return
        if message[0] in ("add", "abort_job"):
            _handle(message, scheduler)
            continue
        if message[0] != "run":
            continue  # an abort that arrived after its batch had finished
        batch: Batch = message[1]
        try:
            clips = generate_batch(engines[batch.model], batch, stream, link.send, link.stop_reason)
        except GenerationAborted as err:
            link.send(("aborted", str(err)))
        except Exception as err:
            log.exception("generation failed for %d job(s)", len(batch.prompts))
            link.send(("failed", reason(err)))
        else:
            link.send(("done", clips))


def _take_messages(link: _ServiceLink, scheduler: Scheduler) -> bool:
    """Jobs that joined and aborts that came while the batch ran; False when told to stop."""
    try:
        while link.conn.poll():
            message = link.receive()
            if message[0] == "stop":
                return False
            _handle(message, scheduler)
    except OSError:
        raise SystemExit(0) from None
    return True


def _handle(message: tuple, scheduler: Scheduler) -> None:
    if message[0] == "add":
        scheduler.add(message[1])
    elif message[0] == "abort_job":
        scheduler.abort(message[1], message[2])
