"""Liveness and readiness: what a load balancer needs, and what an operator needs.

A probe sends no key and gets the status alone (``ready`` or ``not ready``, 200 or 503 with
Retry-After). Why a replica is not ready (model names, a load error that may name a file, the
state of the worker and the database) goes to callers of the API only: a valid key, or anyone
on an open service (where every ``/v1`` route answers anyone); and always to the server's log.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI, Request, Response, Security

from musicgen_train.serve.auth import api_key_header, bearer, presented_key
from musicgen_train.serve.schemas import Health, error_responses
from musicgen_train.serve.service import Service, service

READY_RETRY_SECONDS = 10  # while models load or a generation process restarts


def add_health_routes(app: FastAPI) -> None:
    @app.get("/health", response_model=Health, tags=["health"])
    async def health() -> Health:
        """Liveness: the process answers."""
        return Health(status="ok")

    @app.get(
        "/health/ready",
        response_model=Health,
        tags=["health"],
        responses={
            503: {"model": Health, "description": "Not ready (with a key, detail says why)"},
            **error_responses(403, 429, e403="A key was sent, and it is wrong"),
        },
    )
    async def ready(
        request: Request,
        response: Response,
        svc: Service = Depends(service),
        api_key: str | None = Security(api_key_header),
        credentials=Security(bearer),
    ) -> Health:
        """Readiness: models loaded, worker alive, database reachable. Without a key, the
        status alone; with one (or on an open service), ``detail`` says what is missing."""
        database = await svc.database_status()
        ok = svc.ready and database == "ok"
        response.status_code = 200 if ok else 503
        if not ok:  # when to ask again, as a refused generation says
            response.headers["Retry-After"] = str(READY_RETRY_SECONDS)
        answer = Health(status="ready" if ok else "not ready")
        if _may_see_detail(request, svc, presented_key(api_key, credentials)):
            answer.detail = {
                "models_loaded": sorted(svc.models),
                "models_expected": [m.name for m in svc.settings.models],
                "worker_alive": svc.worker.alive,
                "load_error": svc.load_error,
                "database": database,
            }
        return answer


def _may_see_detail(request: Request, svc: Service, key: str | None) -> bool:
    """True for an API caller. A probe without a key is no error (False); a wrong key is 403,
    counted against the client's failed keys like anywhere else, so readiness is no oracle
    for guessing keys."""
    if svc.guard.open:
        return True
    if not key:
        return False
    svc.guard.identify(request, key)  # raises on a wrong key
    return True
