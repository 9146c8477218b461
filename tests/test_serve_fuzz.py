"""Schema fuzzing: requests generated from the OpenAPI spec never crash the service."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schema fuzzing needs schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402

from musicgen_train.generation import GenerationEngine  # noqa: E402
from musicgen_train.serve.app import create_app  # noqa: E402
from musicgen_train.serve.settings import ModelSpec, ServeSettings  # noqa: E402
from musicgen_train.sources import load_musicgen  # noqa: E402

# Schemathesis reads the schema at import and runs the app's lifespan: the app gets the tiny model
# already loaded, and a queue of one job, so that valid requests stay cheap (most answer 503).
_TMP = Path(tempfile.mkdtemp(prefix="musicgen-serve-fuzz-"))
_SPEC = ModelSpec(name="tiny", source="tiny", max_duration=2.0)
APP = create_app(
    ServeSettings(
        models=[_SPEC],
        database_url=f"sqlite:///{_TMP}/jobs.db",
        storage=str(_TMP / "audio"),
        queue={"max_size": 1},
        rate_limit={"requests": "100000/minute", "generations": "100000/minute"},
    ),
    {"tiny": GenerationEngine(load_musicgen("tiny"))},
)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_input_crashes_the_service(case):
    response = case.call()
    assert response.status_code < 500 or response.status_code == 503, (
        response.status_code,
        response.text[:500],
    )
    if response.status_code == 503 and case.path.startswith("/v1/"):
        assert "retry-after" in response.headers  # a client knows when to come back
    if response.status_code == 422:
        assert response.json()["detail"], response.text
