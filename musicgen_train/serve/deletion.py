"""Deleting what a client made before retention does: a finished generation, an upload.

``DELETE /v1/generations/{id}`` removes a finished job (succeeded, failed or canceled) and its
audio: afterwards the id is unknown (404) on every route and the job leaves the list. A queued
or running job is a ``409`` (cancel it first), so that no worker writes audio for a job that is
gone. ``DELETE /v1/uploads/{id}`` removes an upload; a queued job that names it then fails with
``the ... upload is gone``, as after retention. Both answer ``204`` and are scoped to the API key
that made the thing: another key's id is a ``404``, as an id never made (an open service's
jobs and uploads have no owner: anyone may delete them, as anyone may read them).
"""

from __future__ import annotations

from uuid import UUID

from fastapi import Depends, HTTPException, Response
from fastapi import Path as PathParam
from sqlalchemy import delete

from musicgen_train.serve.auth import owner_of
from musicgen_train.serve.errors import excerpt
from musicgen_train.serve.jobs import FINISHED, JobStore, jobs_table
from musicgen_train.serve.responses import job_or_404
from musicgen_train.serve.schemas import AUTH_ERRORS, error_responses
from musicgen_train.serve.service import Service, service


def delete_finished(store: JobStore, job_id: str) -> bool:
    """Delete job ``job_id`` if it has finished (one conditional DELETE, as every state change
    is: a job that started meanwhile stays); False when no finished job of that id was there."""
    c = jobs_table.c
    query = delete(jobs_table).where(c.id == job_id, c.status.in_(FINISHED))
    with store.engine.begin() as conn:
        return conn.execute(query).rowcount == 1


def _upload_id_of(value: str) -> str | None:
    """``value`` as a stored upload id (a UUID, written canonically); None for anything else."""
    try:
        return str(UUID(value))
    except ValueError:
        return None


def add_deletion_routes(app, caller) -> None:
    """The two ``DELETE`` routes; ``caller`` is the app's key check for ordinary requests."""

    @app.delete(
        "/v1/generations/{job_id}",
        status_code=204,
        response_class=Response,
        tags=["generations"],
        responses=error_responses(
            *AUTH_ERRORS, 404, 409, e409="Queued or running: cancel it first"
        ),
    )
    def delete_generation(
        job_id: str = PathParam(description="A generation's id (a UUID)"),
        svc: Service = Depends(service),
        _caller: str = Depends(caller),
    ) -> Response:
        """Delete a finished generation and its audio now, before retention would."""
        job = job_or_404(svc, job_id, _caller)
        if job.status not in FINISHED:
            raise HTTPException(
                409,
                f"generation {job.id} is {job.status}: cancel it first "
                f"(POST /v1/generations/{job.id}/cancel), then delete it",
            )
        # The file first: a row deleted before a failed file delete would leave audio that
        # retention (which walks the rows) never finds.
        if job.audio_key:
            svc.audio.delete(job.audio_key)
        delete_finished(svc.store, job.id)
        return Response(status_code=204)

    @app.delete(
        "/v1/uploads/{upload_id}",
        status_code=204,
        response_class=Response,
        tags=["uploads"],
        responses=error_responses(*AUTH_ERRORS, 404, e404="No upload with this id (of your key)"),
    )
    def delete_upload(
        upload_id: str = PathParam(description="An id from POST /v1/uploads"),
        svc: Service = Depends(service),
        _caller: str = Depends(caller),
    ) -> Response:
        """Delete an uploaded audio file now, before retention would."""
        stored = _upload_id_of(upload_id)
        if stored is None or not svc.audio.delete_upload(stored, owner_of(_caller)):
            raise HTTPException(404, f"no upload with id {excerpt(upload_id)}")
        return Response(status_code=204)
