"""The job store: jobs in a SQL database, so they survive restarts and replicas can share them.

The database is addressed by a SQLAlchemy URL (a SQLite file by default). Every state change is
one conditional ``UPDATE ... WHERE status = ...`` whose row count says whether it happened, so two
workers racing for a job (threads, processes or replicas) can never both claim it.

Creating a job under the queue bound is one transaction that first updates the single row of
``generation_queue_lock``: that write serialises creates (SQLite takes its write lock, PostgreSQL
and other servers a row lock held to the commit), so the count of queued jobs and the insert
that follows it cannot interleave with another create's (a bound of 64 holds under any number of
concurrent clients and replicas).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    bindparam,
    create_engine,
    event,
    func,
    inspect,
    or_,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

QUEUED, RUNNING = "queued", "running"
SUCCEEDED, FAILED, CANCELED = "succeeded", "failed", "canceled"
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED)
FINISHED = (SUCCEEDED, FAILED, CANCELED)

metadata = MetaData()
jobs_table = Table(
    "generation_jobs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("model", String(200), nullable=False),
    Column("prompt", Text, nullable=False),
    Column("params", Text, nullable=False),  # GenerationParams as JSON
    Column("format", String(8), nullable=False),
    Column("stream", Boolean, nullable=False, default=False),
    Column("status", String(16), nullable=False, index=True),
    Column("progress", Float, nullable=False, default=0.0),
    Column("error", Text),
    Column("worker", String(64)),
    Column("attempts", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False, index=True),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("heartbeat_at", Float),
    Column("audio_key", String(200)),
    Column("audio_seconds", Float),
    Column("audio_expired", Boolean, nullable=False, default=False),
    # who created the job (a hash of its API key); None on an open service: readable by anyone
    Column("owner", String(64)),
)

# JobStore.get, built once: building it per call was half of a status read (130 -> 70 us)
_GET_JOB = select(jobs_table).where(jobs_table.c.id == bindparam("job_id"))

queue_lock_table = Table(
    "generation_queue_lock",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("creates", Integer, nullable=False, default=0),
)


@dataclass
class Job:
    id: str
    model: str
    prompt: str
    params: dict
    format: str
    status: str
    stream: bool = False
    progress: float = 0.0
    error: str | None = None
    worker: str | None = None
    attempts: int = 0
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    heartbeat_at: float | None = None
    audio_key: str | None = None
    audio_seconds: float | None = None
    audio_expired: bool = False
    owner: str | None = None

    @classmethod
    def from_row(cls, row) -> Job:
        values = dict(row._mapping)
        values["params"] = json.loads(values["params"])
        return cls(**values)


@dataclass(frozen=True)
class Work:
    """Audio a job still has to generate: its model and seconds of audio left."""

    model: str
    audio_seconds: float

    @classmethod
    def of(cls, row) -> Work:
        values = row._mapping
        duration = float(json.loads(values["params"]).get("duration", 0.0))
        done = float(values.get("progress") or 0.0)
        return cls(values["model"], duration * (1.0 - min(max(done, 0.0), 1.0)))


def new_job_id() -> str:
    return str(uuid.uuid4())


def is_job_id(value: str) -> bool:
    """Only canonical UUIDs are job ids: nothing else from a request reaches the stores."""
    try:
        return str(uuid.UUID(value)) == value
    except (ValueError, TypeError, AttributeError):
        return False


def _sqlite_wal(dbapi_connection, _record) -> None:
    # WAL lets readers (status requests) proceed while the worker writes; busy_timeout makes
    # concurrent writers wait for the lock instead of failing at once.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class JobStore:
    def __init__(self, url: str):
        self.url = url
        parsed = make_url(url)
        kwargs = {}
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 10}
        else:  # a server: connections it dropped (a restart, a fail-over) are replaced, not used
            kwargs["pool_pre_ping"] = True
        self.engine = create_engine(url, future=True, **kwargs)
        if parsed.get_backend_name() == "sqlite":
            event.listen(self.engine, "connect", _sqlite_wal)
        metadata.create_all(self.engine)
        self._migrate()

    def _migrate(self) -> None:
        """Bring a database made by an older version up to this one's columns and rows."""
        columns = {c["name"] for c in inspect(self.engine).get_columns(jobs_table.name)}
        if "owner" not in columns:
            with self.engine.begin() as conn:
                conn.execute(text(f"ALTER TABLE {jobs_table.name} ADD COLUMN owner VARCHAR(64)"))
        with self.engine.connect() as conn:
            present = conn.execute(
                select(queue_lock_table.c.id).where(queue_lock_table.c.id == 1)
            ).first()
        if present is None:
            try:
                with self.engine.begin() as conn:
                    conn.execute(queue_lock_table.insert().values(id=1, creates=0))
            except IntegrityError:  # another replica inserted it first
                pass

    def close(self) -> None:
        self.engine.dispose()

    # --- creating and reading ----------------------------------------------------------------

    def create(
        self,
        *,
        model: str,
        prompt: str,
        params: dict,
        fmt: str,
        stream: bool,
        owner: str | None = None,
        max_queued: int | None = None,
    ) -> Job | None:
        """Queue a job; with ``max_queued``, None when that many jobs are queued already (the
        count and the insert are one serialised transaction, see the module's doc)."""
        job = Job(
            id=new_job_id(),
            model=model,
            prompt=prompt,
            params=params,
            format=fmt,
            status=QUEUED,
            stream=stream,
            owner=owner,
        )
        row = {**job.__dict__, "params": json.dumps(params)}
        with self.engine.begin() as conn:
            if max_queued is not None:
                # The first statement writes: it waits for (and then holds) the lock until commit.
                conn.execute(
                    queue_lock_table.update()
                    .where(queue_lock_table.c.id == 1)
                    .values(creates=queue_lock_table.c.creates + 1)
                )
                count = select(func.count()).select_from(jobs_table)
                queued = conn.execute(count.where(jobs_table.c.status == QUEUED)).scalar_one()
                if queued >= max_queued:
                    return None
            conn.execute(jobs_table.insert().values(**row))
        return job

    def get(self, job_id: str) -> Job | None:
        with self.engine.connect() as conn:
            row = conn.execute(_GET_JOB, {"job_id": job_id}).first()
        return Job.from_row(row) if row else None

    def status_of(self, job_ids: list[str]) -> dict[str, str]:
        query = select(jobs_table.c.id, jobs_table.c.status).where(jobs_table.c.id.in_(job_ids))
        with self.engine.connect() as conn:
            return {row.id: row.status for row in conn.execute(query)}

    def count(self, status: str = QUEUED) -> int:
        query = select(func.count()).select_from(jobs_table).where(jobs_table.c.status == status)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def queued(self, limit: int = 64) -> list[Job]:
        """The oldest queued jobs first (the id breaks ties): the order workers claim in."""
        query = (
            select(jobs_table)
            .where(jobs_table.c.status == QUEUED)
            .order_by(jobs_table.c.created_at, jobs_table.c.id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [Job.from_row(row) for row in conn.execute(query)]

    # --- what is ahead of a queued job, and how fast it goes -----------------------------------

    def ahead_of(self, job: Job) -> list[Work]:
        """The queued jobs a worker claims before ``job`` (same order as ``queued``)."""
        c = jobs_table.c
        earlier = or_(
            c.created_at < job.created_at, and_(c.created_at == job.created_at, c.id < job.id)
        )
        query = select(c.model, c.params).where(c.status == QUEUED, earlier)
        with self.engine.connect() as conn:
            return [Work.of(row) for row in conn.execute(query)]

    def running(self, excluding: str | None = None) -> list[Work]:
        """The running jobs (but ``excluding``), with the audio each has left to generate."""
        c = jobs_table.c
        query = select(c.model, c.params, c.progress).where(c.status == RUNNING)
        if excluding is not None:
            query = query.where(c.id != excluding)
        with self.engine.connect() as conn:
            return [Work.of(row) for row in conn.execute(query)]

    def recent_runs(self, model: str, limit: int) -> list[tuple[float, float, float]]:
        """(started_at, finished_at, audio_seconds) of the model's last ``limit`` successes."""
        c = jobs_table.c
        query = (
            select(c.started_at, c.finished_at, c.audio_seconds)
            .where(
                c.status == SUCCEEDED,
                c.model == model,
                c.started_at.is_not(None),
                c.audio_seconds.is_not(None),
            )
            .order_by(c.finished_at.desc())
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(query)]

    # --- state changes: each is one conditional UPDATE -----------------------------------------

    def _update(self, job_id: str, expected: tuple[str, ...], **values) -> bool:
        query = (
            jobs_table.update()
            .where(jobs_table.c.id == job_id, jobs_table.c.status.in_(expected))
            .values(**values)
        )
        with self.engine.begin() as conn:
            return conn.execute(query).rowcount == 1

    def claim(self, job_id: str, worker: str) -> bool:
        """Move a queued job to running for ``worker``; False if someone else got it first."""
        now = time.time()
        return self._update(
            job_id,
            (QUEUED,),
            status=RUNNING,
            worker=worker,
            started_at=now,
            heartbeat_at=now,
            progress=0.0,
            attempts=jobs_table.c.attempts + 1,
        )

    def heartbeat(self, job_id: str, progress: float) -> bool:
        return self._update(job_id, (RUNNING,), progress=float(progress), heartbeat_at=time.time())

    def succeed(self, job_id: str, audio_key: str, audio_seconds: float) -> bool:
        return self._update(
            job_id,
            (RUNNING,),
            status=SUCCEEDED,
            progress=1.0,
            finished_at=time.time(),
            audio_key=audio_key,
            audio_seconds=audio_seconds,
        )

    def fail(self, job_id: str, reason: str, expected: tuple[str, ...] = (RUNNING,)) -> bool:
        return self._update(job_id, expected, status=FAILED, error=reason, finished_at=time.time())

    def cancel(self, job_id: str, reason: str = "canceled by the client") -> bool:
        return self._update(
            job_id,
            (QUEUED, RUNNING),
            status=CANCELED,
            finished_at=time.time(),
            error=reason,
        )

    def requeue(self, job_id: str, reason: str) -> bool:
        return self._update(
            job_id,
            (RUNNING,),
            status=QUEUED,
            worker=None,
            progress=0.0,
            error=reason,
            started_at=None,
        )

    # --- recovery and retention ----------------------------------------------------------------

    def recover_stale(
        self, stale_after: float, max_attempts: int, exclude_worker: str | None = None
    ) -> dict[str, list[str]]:
        """Running jobs whose worker stopped beating (it died): re-queue them, or fail them once
        they have used up their attempts. Returns the ids of both kinds."""
        cutoff = time.time() - stale_after
        query = select(jobs_table.c.id, jobs_table.c.attempts).where(
            jobs_table.c.status == RUNNING, jobs_table.c.heartbeat_at <= cutoff
        )
        if exclude_worker is not None:  # a worker's own jobs are alive as long as it is
            query = query.where(jobs_table.c.worker != exclude_worker)
        with self.engine.connect() as conn:
            stale = list(conn.execute(query))
        outcome = {"requeued": [], "failed": []}
        for row in stale:
            if row.attempts < max_attempts:
                reason = f"re-queued: its worker stopped during attempt {row.attempts}"
                if self.requeue(row.id, reason):
                    outcome["requeued"].append(row.id)
            else:
                reason = (
                    f"the server stopped while generating, {row.attempts} times "
                    f"(serve.jobs.max_attempts={max_attempts})"
                )
                if self.fail(row.id, reason):
                    outcome["failed"].append(row.id)
        return outcome

    def expired_audio(self, older_than: float) -> list[Job]:
        """Finished jobs with audio, finished before ``older_than`` (a timestamp)."""
        query = select(jobs_table).where(
            jobs_table.c.audio_key.is_not(None), jobs_table.c.finished_at < older_than
        )
        with self.engine.connect() as conn:
            return [Job.from_row(row) for row in conn.execute(query)]

    def mark_audio_expired(self, job_id: str) -> None:
        query = (
            jobs_table.update()
            .where(jobs_table.c.id == job_id)
            .values(audio_key=None, audio_expired=True)
        )
        with self.engine.begin() as conn:
            conn.execute(query)
