"""A hung generation process under continuous batching is killed, its jobs end with the reason,
and a new process takes over. The fault is real: the child is stopped with SIGSTOP, so it
neither answers nor dies, as a process stuck in a native call."""

from __future__ import annotations

import os
import signal
import time

import pytest
from fastapi.testclient import TestClient
from serve_helpers import make_settings, wait_for, wait_ready

from musicgen_train.serve import worker_continuous
from musicgen_train.serve.app import create_app


def child_of(client: TestClient):
    (generator,) = client.app.state.service.worker.generators
    return generator.process


def start_hung_job(client: TestClient) -> tuple[str, int]:
    """A job that runs, then its generation process stops answering."""
    job_id = client.post("/v1/generations", json={"prompt": "a", "duration": 2.0}).json()["id"]
    wait_for(client, job_id, states=("running",))
    pid = child_of(client).pid
    os.kill(pid, signal.SIGSTOP)
    return job_id, pid


def comes_back(client: TestClient, old_pid: int) -> None:
    """The stopped child was killed and a new one serves; the limit only guards a hang."""
    deadline = time.monotonic() + 120
    while (child := child_of(client)) is None or child.pid == old_pid:
        assert time.monotonic() < deadline, "the stopped child was never replaced"
        time.sleep(0.05)
    wait_ready(client)
    next_id = client.post("/v1/generations", json={"prompt": "b", "duration": 0.2}).json()["id"]
    assert wait_for(client, next_id)["status"] == "succeeded"
    assert "musicgen_generator_restarts_total 1.0" in client.get("/metrics").text
    assert "musicgen_active_generations 0.0" in client.get("/metrics").text


def test_a_silent_generation_process_is_killed_and_its_job_fails(tmp_path, tiny_model_dir):
    settings = make_settings(
        tmp_path, tiny_model_dir, worker={"isolation": "process"}, jobs={"hang_after": 3.0}
    )
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        job_id, pid = start_hung_job(client)
        job = wait_for(client, job_id)
        assert job["status"] == "failed"
        assert job["error"] == (
            "the generation process made no progress for 3 s (serve.jobs.hang_after) and was "
            "killed; it is being restarted"
        )
        comes_back(client, pid)


@pytest.mark.parametrize("why", ["timeout", "canceled"])
def test_a_process_that_ignores_a_stop_is_killed(tmp_path, tiny_model_dir, monkeypatch, why):
    monkeypatch.setattr(worker_continuous, "ABORT_GRACE_SECONDS", 0.5)
    jobs = {"hang_after": 600.0}
    if why == "timeout":
        jobs.update(timeout=1.0, timeout_per_audio_second=0.0)
    settings = make_settings(tmp_path, tiny_model_dir, worker={"isolation": "process"}, jobs=jobs)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        job_id, pid = start_hung_job(client)
        if why == "canceled":
            assert client.post(f"/v1/generations/{job_id}/cancel").status_code == 200
        comes_back(client, pid)  # the worker killed the stopped child and started another
        job = wait_for(client, job_id)
        if why == "timeout":  # the job's own reason, as under static batching
            assert job["status"] == "failed"
            assert job["error"].startswith("timed out after 1 s (serve.jobs.timeout")
        else:
            assert job["status"] == "canceled"
