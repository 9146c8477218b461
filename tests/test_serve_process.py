"""Generation in a child process (``serve.worker.isolation=process``, the default).

Each app here starts a real generation process (forked from the fork server, which imported
torch and transformers once; it loads the model from disk), so the app is shared by the tests of
the module where it can be.
"""

from __future__ import annotations

import io
import multiprocessing.forkserver
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient
from serve_helpers import make_settings, wait_for, wait_ready
from test_serve_stream import parse_wav_stream

from musicgen_train.generation import GenerationEngine, GenerationParams
from musicgen_train.serve.app import create_app
from musicgen_train.serve.jobs import JobStore


def child_of(client: TestClient):
    (generator,) = client.app.state.service.worker.generators
    return generator.process


@pytest.fixture(scope="module")
def client(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("process-serve")
    settings = make_settings(tmp, tiny_model_dir, worker={"isolation": "process", "nice": 0})
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client
    assert child_of(client) is None or not child_of(client).is_alive()


def test_the_model_lives_in_another_process_and_gives_the_same_audio(client, tiny_loaded):
    child = child_of(client)
    assert child.is_alive() and child.pid != os.getpid()
    assert client.app.state.service.models["tiny"].sample_rate == 32000
    body = {"prompt": "calm jazz piano", "duration": 0.3, "seed": 7, "format": "flac"}
    job = wait_for(client, client.post("/v1/generations", json=body).json()["id"])
    assert job["status"] == "succeeded" and job["progress"] == 1.0, job
    audio = client.get(job["links"]["audio"])
    assert audio.headers["content-type"] == "audio/flac"
    samples, rate = sf.read(io.BytesIO(audio.content), dtype="float32")
    # The child loaded the same folder: the seed gives this process's engine's audio.
    expected = GenerationEngine(tiny_loaded).generate(
        ["calm jazz piano"], GenerationParams(duration=0.3, seed=7)
    )[0, 0]
    assert rate == 32000 and samples.shape == expected.shape
    np.testing.assert_allclose(samples, expected, atol=1.5 / 32767)


def parent_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^PPid:\s+(\d+)", status, re.M).group(1))


def test_generation_processes_fork_from_the_fork_server(client):
    # Not spawned (a fresh interpreter each) and not forked from the threaded service itself.
    server = multiprocessing.forkserver._forkserver._forkserver_pid
    assert server is not None and server != os.getpid()
    assert parent_of(child_of(client).pid) == server


def takes_sigterm(status: str) -> bool:
    """Whether SIGTERM would end the process whose /proc/PID/status is ``status``: neither
    blocked nor ignored."""
    masks = [
        int(re.search(rf"^{n}:\s+(\w+)", status, re.M).group(1), 16) for n in ("SigBlk", "SigIgn")
    ]
    return not (masks[0] | masks[1]) & (1 << (signal.SIGTERM - 1))


FORK_SERVER_STATUS = """
import multiprocessing.forkserver, signal
from musicgen_train.serve import process_start
process_start.PRELOAD[:] = []  # only its signals are looked at: no imports to wait for
def handler(*_): pass
signal.signal(signal.SIGTERM, handler)
process_start.start_fork_server()
pid = multiprocessing.forkserver._forkserver._forkserver_pid
print(signal.getsignal(signal.SIGTERM) is handler)
print(open(f"/proc/{pid}/status").read())
"""


def test_the_fork_server_outlives_a_sigterm_to_the_process_group():
    # Started from the main thread (the lifespan's), it does not take SIGTERM, and the service
    # keeps its own handler; tests/test_serve_signals.py sends the group SIGTERM for real.
    done = subprocess.run(
        [sys.executable, "-c", FORK_SERVER_STATUS], capture_output=True, text=True
    )
    handler_kept, _, status = done.stdout.partition("\n")
    assert handler_kept == "True" and not takes_sigterm(status), done.stderr[-2000:]


def test_audio_streams_across_the_process_boundary(client):
    body = {"prompt": "drums", "duration": 0.6, "seed": 5}
    with client.stream("POST", "/v1/generations/stream", json=body) as response:
        assert response.status_code == 200
        job_id = response.headers["x-generation-id"]
        data = b"".join(response.iter_bytes())
    header, pcm = parse_wav_stream(data)
    assert header["rate"] == 32000 and pcm.shape == (int(0.6 * 32000),)
    job = wait_for(client, job_id)
    stored, _ = sf.read(io.BytesIO(client.get(job["links"]["audio"]).content), dtype="float32")
    np.testing.assert_allclose(pcm, stored, atol=3 / 32767)


def test_cancel_stops_the_child_generating_and_it_stays_up(client):
    child = child_of(client)
    job_id = client.post("/v1/generations", json={"prompt": "a", "duration": 2.0}).json()["id"]
    wait_for(client, job_id, states=("running", "succeeded"))
    assert client.post(f"/v1/generations/{job_id}/cancel").status_code in (200, 409)
    job = wait_for(client, job_id)
    if job["status"] == "canceled":  # the normal case; a very fast machine may finish first
        assert job["progress"] < 1.0
    next_id = client.post("/v1/generations", json={"prompt": "b", "duration": 0.2}).json()["id"]
    assert wait_for(client, next_id)["status"] == "succeeded"
    assert child_of(client) is child and child.is_alive()  # aborted, not killed


def test_a_child_that_dies_fails_its_jobs_with_the_reason_and_comes_back(client):
    child = child_of(client)
    job_id = client.post("/v1/generations", json={"prompt": "a", "duration": 2.0}).json()["id"]
    wait_for(client, job_id, states=("running",))
    os.kill(child.pid, signal.SIGKILL)  # what the kernel's OOM killer does
    job = wait_for(client, job_id)
    assert job["status"] == "failed"
    assert job["error"] == "the generation process died (signal SIGKILL); it is being restarted"
    wait_ready(client)
    assert child_of(client).pid != child.pid
    next_id = client.post("/v1/generations", json={"prompt": "b", "duration": 0.2}).json()["id"]
    assert wait_for(client, next_id)["status"] == "succeeded"
    metrics = client.get("/metrics").text
    assert 'musicgen_jobs_finished_total{model="tiny",status="failed"} 1.0' in metrics
    assert "musicgen_generator_restarts_total 1.0" in metrics


def test_shutdown_requeues_the_running_job_and_stops_the_child(tmp_path, tiny_model_dir):
    settings = make_settings(tmp_path, tiny_model_dir, worker={"isolation": "process"})
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        child = child_of(client)
        job_id = client.post("/v1/generations", json={"prompt": "a", "duration": 2.0}).json()["id"]
        wait_for(client, job_id, states=("running",))
    assert child.exitcode == 0  # it left on the service's word, not killed
    store = JobStore(settings.database_url)
    job = store.get(job_id)
    store.close()
    assert job.status == "queued" and job.attempts == 1
    assert job.error == "re-queued: the server shut down while generating"


def test_a_model_the_child_cannot_load_is_one_line_in_readiness(tmp_path, tiny_model_dir):
    missing = tmp_path / "no-such-model"
    settings = make_settings(
        tmp_path, tiny_model_dir, models=[{"name": "gone", "source": str(missing)}]
    )
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 120
        while (error := client.get("/health/ready").json()["detail"]["load_error"]) is None:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        ready = client.get("/health/ready")
        assert ready.status_code == 503 and "\n" not in error and str(missing) in error
        body = {"prompt": "a", "duration": 0.2, "model": "gone"}
        busy = client.post("/v1/generations", json=body)
        assert busy.status_code == 503 and str(missing) in busy.json()["detail"]


def test_readiness_is_503_while_a_replacement_child_loads(client):
    (generator,) = client.app.state.service.worker.generators
    old = generator.process
    os.kill(old.pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:  # the worker notices the death and starts a replacement
        process = generator.process
        if process is not None and process.pid != old.pid and process.is_alive():
            break
        assert time.monotonic() < deadline, "no replacement child"
        time.sleep(0.002)
    # The replacement is alive but still importing torch and loading the model (seconds).
    ready = client.get("/health/ready")
    assert ready.status_code == 503, (generator.loaded, ready.json())
    assert ready.json()["detail"]["worker_alive"] is False
    refused = client.post("/v1/generations", json={"prompt": "a", "duration": 0.2})
    assert refused.status_code == 503
    assert refused.json()["detail"] == "not ready: the generation process is restarting"
    wait_ready(client)
    assert generator.loaded and child_of(client).pid == process.pid


def test_a_fork_server_started_again_after_it_died_outlives_sigterm_too(client):
    """The OOM killer ends the fork server: the generation process's end reads as a death
    (multiprocessing reads its status from the server), and the worker thread that replaces it
    starts a new server. multiprocessing started that one from the worker thread as it was,
    taking SIGTERM (only the main thread may ignore a signal), so a supervisor's stop killed
    it and failed the jobs the service was re-queueing. Now it does not take SIGTERM either."""
    server = multiprocessing.forkserver._forkserver._forkserver_pid
    os.kill(server, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while multiprocessing.forkserver._forkserver._forkserver_pid in (None, server):
        assert time.monotonic() < deadline, "the fork server was not started again"
        time.sleep(0.05)
    wait_ready(client)
    again = multiprocessing.forkserver._forkserver._forkserver_pid
    assert parent_of(child_of(client).pid) == again and not takes_sigterm(
        Path(f"/proc/{again}/status").read_text()
    )
    child = child_of(client)
    os.kill(again, signal.SIGTERM)  # a supervisor's stop, as far as the server sees it
    job = client.post("/v1/generations", json={"prompt": "b", "duration": 0.2}).json()
    assert wait_for(client, job["id"])["status"] == "succeeded"
    assert child_of(client) is child and child.is_alive()  # not read as a death
