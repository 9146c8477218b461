"""SIGTERM to the whole process group (how systemd, docker and most supervisors stop a service):
the running job is re-queued, the generation process and the server exit cleanly."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
from backend_servers import free_port
from test_serve_server import start_server, wait_until_ready

from musicgen_train.serve.jobs import JobStore


def test_sigterm_to_the_process_group_requeues_running_jobs_and_exits_cleanly(
    tmp_path, tiny_model_dir
):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    database = f"sqlite:///{tmp_path}/jobs.db"
    # A session of its own: the server, its generation process and their helpers are one group.
    process = start_server(tmp_path, tiny_model_dir, port, "serve.precision=fp32", session=True)
    try:
        wait_until_ready(base, process)
        ids = [
            httpx.post(f"{base}/v1/generations", json={"prompt": p, "duration": 25.0}).json()["id"]
            for p in ("long one", "long two")
        ]
        deadline = time.monotonic() + 120
        while httpx.get(f"{base}/v1/generations/{ids[0]}").json()["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=90)
    finally:
        kill_group_if_running(process)
    stderr = process.stderr.read().decode()
    assert process.returncode == 0, stderr[-3000:]
    store = JobStore(database)
    jobs = [store.get(job_id) for job_id in ids]
    store.close()
    for job in jobs:  # running (both rows of the batch), re-queued for the next start
        assert job.status == "queued", (job.status, job.error)
    assert jobs[0].error == "re-queued: the server shut down while generating"
    assert "SIGTERM" not in (jobs[0].error or "")
    # Nothing of the group is left behind (the generation process left on the server's word).
    deadline = time.monotonic() + 30
    while True:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "a process of the group is still running"
        time.sleep(0.1)


def test_sigterm_with_a_listener_connected_requeues_at_once_and_runs_nothing_more(
    tmp_path, tiny_model_dir
):
    """uvicorn waits up to 30 s for open connections before the app's shutdown. Before, a
    client streaming a job or watching its events held the server in that wait, and the worker
    went on claiming and generating queued jobs all along (every one of them ran). Now the
    signal drains the service at once: nothing more is claimed, the running job is re-queued,
    the stream and the event stream end, and the server exits."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    database = f"sqlite:///{tmp_path}/jobs.db"
    # One job runs, the others wait in the queue.
    extra = "serve.worker.max_batch_size=1"
    process = start_server(tmp_path, tiny_model_dir, port, extra, session=True)
    listeners: list[threading.Thread] = []
    heard: dict[str, int] = {}
    try:
        wait_until_ready(base, process)
        job = {"prompt": "long", "duration": 30.0}
        streamed = httpx.stream("POST", f"{base}/v1/generations/stream", json=job, timeout=120)
        response = streamed.__enter__()
        streamed_id = response.headers["x-generation-id"]
        queued = [httpx.post(f"{base}/v1/generations", json=job).json()["id"] for _ in range(4)]

        def read_stream() -> None:
            heard["stream"] = sum(len(chunk) for chunk in response.iter_bytes())

        def watch_events() -> None:
            with httpx.stream(
                "GET", f"{base}/v1/generations/{queued[-1]}/events", timeout=120
            ) as r:
                heard["events"] = sum(1 for line in r.iter_lines() if line.startswith("data:"))

        listeners = [threading.Thread(target=f, daemon=True) for f in (read_stream, watch_events)]
        for thread in listeners:
            thread.start()
        deadline = time.monotonic() + 120
        while httpx.get(f"{base}/v1/generations/{streamed_id}").json()["progress"] <= 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        signaled = time.monotonic()
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=90)
        stopped_after = time.monotonic() - signaled
        for thread in listeners:
            thread.join(10)
        streamed.__exit__(None, None, None)
    finally:
        kill_group_if_running(process)
    stderr = process.stderr.read().decode()
    assert process.returncode == 0, stderr[-3000:]
    assert stopped_after < 20, stopped_after  # not 30 s of waiting for the listeners
    assert not any(thread.is_alive() for thread in listeners), "a listener was left hanging"
    assert heard["events"] >= 1 and heard["stream"] > 44, heard  # both had begun
    store = JobStore(database)
    statuses = {job_id: store.get(job_id).status for job_id in [streamed_id, *queued]}
    store.close()
    assert set(statuses.values()) == {"queued"}, statuses  # re-queued, or never claimed


def kill_group_if_running(process) -> None:
    """A test that failed before its server stopped leaves no process group behind."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
