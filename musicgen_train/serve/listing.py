"""``GET /v1/generations``: the caller's generations, newest first, a page at a time.

Pages are keyed by the last job of the previous page, not by an offset, so jobs created while a
client pages through do not shift or repeat its pages. ``after`` takes that job's id, or the
position ``<created_at>_<id>`` that ``next`` links carry: a position still works once its job is
deleted (a client deleting each page as it goes, "delete all my jobs", follows ``next`` to the end).
"""

from __future__ import annotations

from typing import Literal

from fastapi import Depends, HTTPException, Query
from fastapi.exceptions import RequestValidationError
from sqlalchemy import and_, or_, select

from musicgen_train.serve.errors import excerpt
from musicgen_train.serve.jobs import STATES, Job, JobStore, jobs_table
from musicgen_train.serve.responses import describe, job_id_of, visible
from musicgen_train.serve.schemas import AUTH_ERRORS, GenerationList, error_responses
from musicgen_train.serve.service import Service, service

MAX_PAGE = 100


def page(
    store: JobStore, caller: str, status: str | None, limit: int, after: tuple[float, str] | None
):
    """Up to ``limit`` + 1 jobs ``caller`` may see (as ``responses.visible`` decides: its own
    and those without an owner), newest first, older than the position ``after``
    (``(created_at, id)``)."""
    c = jobs_table.c
    query = select(jobs_table).where(or_(c.owner.is_(None), c.owner == caller))
    if status is not None:
        query = query.where(c.status == status)
    if after is not None:
        created_at, job_id = after
        older = or_(c.created_at < created_at, and_(c.created_at == created_at, c.id < job_id))
        query = query.where(older)
    query = query.order_by(c.created_at.desc(), c.id.desc()).limit(limit + 1)
    with store.engine.connect() as conn:
        return [Job.from_row(row) for row in conn.execute(query)]


def position(job: Job) -> str:
    """The ``after`` value that lists what comes after ``job`` (``repr``: the exact float)."""
    return f"{job.created_at!r}_{job.id}"


def _cursor(svc: Service, after: str, caller: str) -> tuple[float, str]:
    try:
        if "_" in after:  # a position: needs no job (it may be deleted); the owner filter holds
            created_at, job_id = after.split("_", 1)
            return float(created_at), job_id_of(job_id)
        after_id = job_id_of(after)
        job = visible(svc.store.get(after_id), after_id, caller)
        return job.created_at, job.id
    except (HTTPException, ValueError):  # unknown, another key's or no id at all: one answer
        message = f"no generation with id {excerpt(after)}: pass the last id of the previous page"
        error = {"type": "value_error", "loc": ("query", "after"), "msg": message}
        raise RequestValidationError([error]) from None


def add_listing_route(app, caller) -> None:
    """``GET /v1/generations``; ``caller`` is the app's key check for ordinary requests."""

    @app.get(
        "/v1/generations",
        response_model=GenerationList,
        tags=["generations"],
        responses={422: {"description": "Invalid query"}, **error_responses(*AUTH_ERRORS)},
    )
    def list_generations(
        limit: int = Query(20, ge=1, le=MAX_PAGE, description="Generations per page"),
        after: str | None = Query(
            None, description="The last id of the previous page, or the position `next` carries"
        ),
        status: Literal[STATES] | None = Query(None, description="Only jobs in this state"),
        svc: Service = Depends(service),
        _caller: str = Depends(caller),
    ) -> dict:
        """Your generations (those of your API key), newest first; `next` is the next page."""
        cursor = _cursor(svc, after, _caller) if after is not None else None
        jobs = page(svc.store, _caller, status, limit, cursor)
        more = len(jobs) > limit
        jobs = jobs[:limit]
        following = None
        if more:
            query = f"limit={limit}&after={position(jobs[-1])}"
            query += f"&status={status}" if status else ""
            following = f"/v1/generations?{query}"
        return {"data": [describe(job) for job in jobs], "has_more": more, "next": following}
