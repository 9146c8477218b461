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


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    """One real server for the module's tests: its base URL."""
    tmp_path = tmp_path_factory.mktemp("real-server")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    limits = ("serve.rate_limit.generations=600/minute", "serve.rate_limit.requests=60000/minute")
    process = start_server(tmp_path, tiny_model_dir, port, *limits)
    try:
        wait_until_ready(base, process)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    assert process.returncode in (0, -15), process.stderr.read().decode()[-2000:]


@pytest.mark.slow
def test_real_server_stays_responsive_while_generating(server, tiny_model_dir):
    base = server
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


def counters(base: str) -> dict[str, float]:
    """The service's job and audio counters, by their sample line."""
    text = httpx.get(f"{base}/metrics").text
    names = ("musicgen_jobs_finished_total", "musicgen_audio_generated_seconds_total")
    lines = [line.rsplit(" ", 1) for line in text.splitlines() if line.startswith(names)]
    return {name: float(value) for name, value in lines}


async def mixed_clients(base: str) -> list[dict]:
    """24 clients at once: mixed durations, seeds and guidance; some cancel while their job
    waits or runs, some stream it, some stream and leave, some delete it once done."""
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:

        async def one(i: int) -> dict:
            body = {"prompt": f"client {i}", "duration": (0.2, 0.5, 1.0)[i % 3]}
            body |= {"guidance_scale": (1.0, 3.0)[i % 2], "seed": i} if i % 4 else {}
            mode = ("poll", "cancel", "stream", "leave", "poll", "delete")[i % 6]
            if mode in ("stream", "leave"):
                request = client.stream("POST", "/v1/generations/stream", json=body)
                async with request as response:
                    job_id = response.headers["x-generation-id"]
                    async for _ in response.aiter_bytes():
                        if mode == "leave":
                            break
            else:
                job_id = (await client.post("/v1/generations", json=body)).json()["id"]
                if mode == "cancel":
                    await client.post(f"/v1/generations/{job_id}/cancel")
            while (job := (await client.get(f"/v1/generations/{job_id}")).json())["status"] in (
                "queued",
                "running",
            ):
                await asyncio.sleep(0.1)
            if mode == "delete":
                job["deleted"] = (await client.delete(f"/v1/generations/{job_id}")).status_code
            return {**job, "duration": body["duration"]}

        return await asyncio.gather(*(one(i) for i in range(24)))


@pytest.mark.slow
def test_many_clients_at_once_every_job_ends_once_and_the_counters_agree(server):
    base = server
    before = counters(base)
    jobs = asyncio.run(mixed_clients(base))
    after = counters(base)
    assert len({job["id"] for job in jobs}) == 24  # none lost, none twice
    assert {job["status"] for job in jobs} <= {"succeeded", "canceled"}, jobs
    model = jobs[0]["model"]
    for status in ("succeeded", "canceled"):
        name = f'musicgen_jobs_finished_total{{model="{model}",status="{status}"}}'
        counted = after.get(name, 0) - before.get(name, 0)
        assert counted == sum(job["status"] == status for job in jobs), status
    name = f'musicgen_audio_generated_seconds_total{{model="{model}"}}'
    made = sum(job["duration"] for job in jobs if job["status"] == "succeeded")
    assert after[name] - before.get(name, 0) == pytest.approx(made)
    deleted = {job["id"] for job in jobs if job.get("deleted") == 204}
    assert len(deleted) == len(jobs[5::6])
    listed = {job["id"] for job in httpx.get(f"{base}/v1/generations?limit=100").json()["data"]}
    assert listed >= {job["id"] for job in jobs} - deleted and not listed & deleted
    # A canceled job's row leaves the batch at the generation process's next step, after its
    # status says canceled: the gauge comes back to 0 then.
    deadline = time.monotonic() + 30
    while "musicgen_active_generations 0.0" not in (gauges := httpx.get(f"{base}/metrics").text):
        assert time.monotonic() < deadline, "rows left running"
        time.sleep(0.1)
    assert "musicgen_queue_depth 0.0" in gauges
