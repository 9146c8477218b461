"""What an attacker of the service tried, and what it now answers: audio that decodes to
gigabytes, uploads without end, stalled bodies, huge Range numbers, keys in URLs and logs,
security headers, and the API description turned off."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import logging
import re

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient
from serve_helpers import make_settings, served
from test_serve_contract import KEYS, keyed  # noqa: F401 - a fixture

from musicgen_train.serve.app import create_app
from musicgen_train.serve.responses import ranged
from musicgen_train.serve.security import RedactSecrets, redact_server_logs


def flac(seconds: float, rate: int = 8000, channels: int = 1) -> bytes:
    """Silence: a few bytes per block in FLAC, however long."""
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros((int(seconds * rate), channels), "float32"), rate, format="FLAC")
    return buffer.getvalue()


def claiming_frames(data: bytes, frames: int) -> bytes:
    """A FLAC whose STREAMINFO claims ``frames`` samples (its last 36 bits before the MD5)."""
    data = bytearray(data)
    at = 8 + 10  # after 'fLaC', the block header, the block and frame sizes
    fields = int.from_bytes(data[at : at + 8], "big")
    fields = (fields & ~((1 << 36) - 1)) | frames
    data[at : at + 8] = fields.to_bytes(8, "big")
    return bytes(data)


@pytest.fixture
def open_app(tmp_path, tiny_model_dir, tiny_loaded, monkeypatch):
    """``open_app(**settings)``: an app with no key and no worker (requests only)."""
    monkeypatch.delenv("MUSICGEN_SERVE_API_KEYS", raising=False)

    def build(**overrides):
        settings = make_settings(tmp_path, tiny_model_dir, **overrides)
        return TestClient(create_app(settings, served(tiny_loaded)))

    return build


def test_audio_that_decodes_beyond_any_use_is_refused_before_it_is_decoded(open_app):
    # The longest usable audio is max(max_melody_seconds, the model's max_duration) = 2 s.
    client = open_app(limits={"max_melody_seconds": 1.0})
    assert client.post("/v1/uploads", content=flac(1.5)).status_code == 201

    def refusal(data: bytes) -> str:
        answer = client.post("/v1/uploads", content=data)
        assert answer.status_code == 422, answer.text
        return answer.json()["detail"][0]["msg"]

    # Ten minutes of silence at 384 kHz is 780 KB of FLAC and was 0.9 GB of float32: stored.
    assert refusal(flac(10)) == (
        "the audio is longer than 2 s, the longest audio this service uses (its header says 10.0 s)"
    )
    # A header claiming 2^36 frames made soundfile allocate 512 GiB at once.
    liar = claiming_frames(flac(1.0), 2**36 - 1)
    assert refusal(liar).startswith("the audio is longer than 2 s")
    assert refusal(_wav(channels=16)) == ("the audio has 16 channels; at most 8 are accepted")
    assert (
        refusal(_wav(rate=768_000)) == "the audio has a sample rate of 768000 Hz; at most 384000 Hz"
    )
    # The same bound for audio sent inside a job request.
    body = {"prompt": "a", "duration": 0.2, "audio_prompt": {"base64": ""}}
    body["audio_prompt"]["base64"] = base64.b64encode(flac(10)).decode()
    with client:  # started: a job request is checked only once the service is ready
        inline = client.post("/v1/generations", json=body)
    assert inline.status_code == 422 and "longer than 2 s" in inline.text


def _wav(channels: int = 1, rate: int = 8000) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros((80, channels), "float32"), rate, format="WAV")
    return buffer.getvalue()


def test_a_key_keeps_at_most_max_uploads_per_key(
    tmp_path, tiny_model_dir, tiny_loaded, monkeypatch
):
    monkeypatch.setenv("TEST_SERVE_KEYS", "alice-key,bob-key")
    settings = make_settings(
        tmp_path,
        tiny_model_dir,
        auth={"api_keys_env": "TEST_SERVE_KEYS"},
        limits={"max_uploads_per_key": 2},
    )
    client = TestClient(create_app(settings, served(tiny_loaded)))
    alice = KEYS["alice"]
    ids = [client.post("/v1/uploads", content=flac(0.5), headers=alice).json()["id"] for _ in "ab"]
    full = client.post("/v1/uploads", content=flac(0.5), headers=alice)
    assert full.status_code == 429
    assert full.json()["detail"].startswith(
        "2 uploads are stored for this key, the most it may keep"
    )
    # Another key has its own room; deleting one makes room again.
    assert client.post("/v1/uploads", content=flac(0.5), headers=KEYS["bob"]).status_code == 201
    assert client.delete(f"/v1/uploads/{ids[0]}", headers=alice).status_code == 204
    assert client.post("/v1/uploads", content=flac(0.5), headers=alice).status_code == 201


def test_a_stalled_body_is_408(open_app):
    app = open_app(limits={"body_timeout": 0.2}).app
    sent = []

    async def stalled_body():
        sent.append(1)
        if len(sent) == 1:
            return {"type": "http.request", "body": b"RIFF", "more_body": True}
        await asyncio.Event().wait()  # the client never sends the rest

    async def record(message):
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/uploads",
        "raw_path": b"/v1/uploads",
        "query_string": b"",
        "headers": [(b"content-length", b"1000")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "scheme": "http",
        "http_version": "1.1",
        "root_path": "",
    }
    asyncio.run(asyncio.wait_for(app(scope, stalled_body, record), 30))
    start = next(m for m in sent if isinstance(m, dict) and m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if isinstance(m, dict) and "body" in m)
    assert start["status"] == 408
    assert json.loads(body)["detail"] == (
        "the request body stalled for 0.2 s (serve.limits.body_timeout): send it at once"
    )


def test_a_range_of_thousands_of_digits_is_answered_not_a_500():
    data = b"x" * 100
    past = ranged(data, "bytes=" + "9" * 5000 + "-", "audio/wav", {})
    assert past.status_code == 416 and past.headers["content-range"] == "bytes */100"
    assert "... (5007 characters)" in past.body.decode()  # the header is not echoed whole
    to_end = ranged(data, "bytes=10-" + "9" * 5000, "audio/wav", {})
    assert to_end.status_code == 206 and to_end.headers["content-range"] == "bytes 10-99/100"
    suffix = ranged(data, "bytes=-" + "9" * 5000, "audio/wav", {})
    assert suffix.status_code == 206 and suffix.body == data


def test_keys_are_read_from_headers_only_and_never_logged(keyed):  # noqa: F811
    client, _ = keyed()
    in_url = client.get("/v1/models?api_key=alice-key")
    assert in_url.status_code == 401
    assert in_url.json()["detail"].startswith("API keys in the URL are not accepted")
    # A header's edges are not part of its value.
    assert client.get("/v1/models", headers={"X-API-Key": " alice-key "}).status_code == 200
    assert (
        client.get("/v1/models", headers={"Authorization": "bearer alice-key"}).status_code == 200
    )

    # uvicorn's access line and its trace of the ASGI scope, as uvicorn logs them.
    redact_server_logs()
    access = logging.LogRecord(
        "uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
        ("1.2.3.4:5", "GET", "/v1/models?limit=3&api_key=alice-key&token=t0k", "1.1", 401), None,
    )  # fmt: skip
    scope = {"query_string": b"key=alice-key", "headers": [(b"x-api-key", b"alice-key")]}
    trace = logging.LogRecord(
        "uvicorn.asgi", 5, "", 0, "ASGI [%d] Started scope=%s", (3, scope), None
    )
    for record in (access, trace):
        for redactor in logging.getLogger(record.name).filters:
            redactor.filter(record)
    assert access.getMessage() == (
        '1.2.3.4:5 - "GET /v1/models?limit=3&api_key=REDACTED&token=REDACTED HTTP/1.1" 401'
    )
    assert "alice-key" not in trace.getMessage() and "key=REDACTED" in trace.getMessage()
    assert scope["query_string"] == b"key=alice-key"  # the server's own scope is untouched
    assert any(isinstance(f, RedactSecrets) for f in logging.getLogger("uvicorn.access").filters)


def test_pages_carry_a_content_security_policy_and_every_answer_security_headers(open_app):
    client = open_app()
    page = client.get("/")
    policy = page.headers["content-security-policy"]
    script = re.search(r"<script>(.*?)</script>", page.text, re.S).group(1).encode()
    digest = base64.b64encode(hashlib.sha256(script).digest()).decode()
    assert f"script-src 'self' 'sha256-{digest}'" in policy
    assert "frame-ancestors 'none'" in policy and "'unsafe-inline'" not in policy
    docs = client.get("/docs").headers["content-security-policy"]
    assert "script-src 'self' 'sha256-" in docs
    too_big = client.post("/v1/generations", content=b"x" * 70000)
    for answer in (page, client.get("/v1/models"), too_big, client.get("/nowhere")):
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["referrer-policy"] == "no-referrer"
    assert "content-security-policy" not in client.get("/v1/models").headers


def test_the_api_description_can_be_turned_off(open_app):
    client = open_app(docs=False)
    for path in ("/docs", "/openapi.json", "/static/docs/swagger-ui.css"):
        assert client.get(path).status_code == 404, path
    assert client.get("/").status_code == 200 and client.get("/v1/models").status_code == 200
