"""The real server: `musicgen-train serve` under uvicorn on loopback, loaded while it generates."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import httpx
import pytest
from backend_servers import free_port

CLIENTS = 100


def wait_until_ready(base: str, process: subprocess.Popen, limit: float = 180.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {process.stderr.read().decode()[-3000:]}")
        try:
            if httpx.get(f"{base}/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("server did not become ready")


def start_server(
    tmp_path, model_dir, port: int, *extra: str, session: bool = False
) -> subprocess.Popen:
    """``musicgen-train serve`` on loopback with a tiny model, SQLite jobs and file storage under
    ``tmp_path``, as a user starts it (no API keys); ``session``: a process group of its own."""
    command = [
        sys.executable,
        "-m",
        "musicgen_train.cli",
        "serve",
        f"model={model_dir}",
        "serve.host=127.0.0.1",
        f"serve.port={port}",
        "serve.worker.torch_threads=1",
        f"serve.database_url=sqlite:///{tmp_path}/jobs.db",
        f"serve.storage={tmp_path}/audio",
        *extra,
    ]
    env = {**os.environ, "MUSICGEN_TRAIN_HOME": str(tmp_path / "home")}
    env.pop("MUSICGEN_SERVE_API_KEYS", None)
    return subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=session,
    )


def finished(base: str, job_id: str, limit: float) -> dict:
    """The job's status once it left the queue and ran (or ``limit`` seconds passed)."""
    deadline = time.monotonic() + limit
    status = httpx.get(f"{base}/v1/generations/{job_id}").json()
    while status["status"] in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.2)
        status = httpx.get(f"{base}/v1/generations/{job_id}").json()
    return status


async def hammer(base: str, job_id: str) -> list[int]:
    """100 concurrent clients, each asking for status, liveness and readiness."""
    limits = httpx.Limits(max_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:

        async def one_client() -> list[int]:
            codes = []
            for path in (f"/v1/generations/{job_id}", "/health", "/health/ready"):
                codes.append((await client.get(path)).status_code)
            return codes

        results = await asyncio.gather(*(one_client() for _ in range(CLIENTS)))
    return [code for codes in results for code in codes]


@pytest.mark.slow
def test_real_server_stays_responsive_while_generating(tmp_path, tiny_model_dir):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = start_server(tmp_path, tiny_model_dir, port)
    try:
        wait_until_ready(base, process)
        models = httpx.get(f"{base}/v1/models").json()
        assert models["models"][0]["source"] == str(tiny_model_dir)
        job = httpx.post(f"{base}/v1/generations", json={"prompt": "busy", "duration": 3.0})
        assert job.status_code == 202
        job_id = job.json()["id"]
        codes = asyncio.run(hammer(base, job_id))
        assert len(codes) == 3 * CLIENTS and set(codes) == {200}
        status = finished(base, job_id, limit=180)
        assert status["status"] == "succeeded", status
        audio = httpx.get(f"{base}/v1/generations/{job_id}/audio")
        assert audio.status_code == 200 and len(audio.content) == 44 + 3 * 32000 * 2
        metrics = httpx.get(f"{base}/metrics").text
        assert 'route="/health",status="200"' in metrics
        # A streaming client that leaves (Ctrl-C on curl) cancels its job: nobody listens.
        body = {"prompt": "left early", "duration": 30.0}
        with httpx.stream("POST", f"{base}/v1/generations/stream", json=body, timeout=60) as r:
            left = r.headers["x-generation-id"]
            next(r.iter_bytes())  # the WAV header: the job is queued or running
        status = finished(base, left, limit=30)
        assert status["status"] == "canceled", status
        assert "client of its stream disconnected" in status["error"]
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    assert process.returncode in (0, -15), process.stderr.read().decode()[-2000:]
