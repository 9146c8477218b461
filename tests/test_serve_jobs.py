"""The job store and its recovery: racing claims, restarts, retention, ids that stay ids."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient
from serve_helpers import (
    make_settings,
    served,
    wait_for,
)

from musicgen_train.serve.app import create_app
from musicgen_train.serve.jobs import JobStore, is_job_id
from musicgen_train.serve.storage import AudioStore, audio_key, delete_expired_audio

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def new_job(store: JobStore, prompt: str = "a", duration: float = 0.2):
    return store.create(
        model="tiny", prompt=prompt, params={"duration": duration}, fmt="wav", stream=False
    )


def test_two_stores_racing_for_the_same_jobs_never_both_win(database_url):
    url = database_url
    stores = [JobStore(url), JobStore(url)]  # two "replicas" on one database
    jobs = [new_job(stores[0], f"p{i}") for i in range(20)]
    wins: dict[str, list[str]] = {job.id: [] for job in jobs}

    def race(store: JobStore, worker: str, barrier: threading.Barrier) -> None:
        for job in jobs:
            barrier.wait()
            if store.claim(job.id, worker):
                wins[job.id].append(worker)

    barrier = threading.Barrier(4)
    threads = [
        threading.Thread(target=race, args=(stores[i % 2], f"w{i}", barrier)) for i in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(len(winners) == 1 for winners in wins.values()), wins
    for job in jobs:
        stored = stores[1].get(job.id)
        assert stored.status == "running" and stored.worker == wins[job.id][0]
        assert stored.attempts == 1


def test_state_changes_only_from_the_right_state(database_url):
    store = JobStore(database_url)
    job = new_job(store)
    assert not store.succeed(job.id, "k", 1.0)  # not running yet
    assert store.claim(job.id, "w") and not store.claim(job.id, "w2")
    assert store.succeed(job.id, audio_key(job.id, "wav"), 0.2)
    assert not store.cancel(job.id) and not store.fail(job.id, "late")
    assert store.get(job.id).status == "succeeded"
    assert store.count("queued") == 0 and store.count("succeeded") == 1


def test_stale_running_jobs_are_requeued_then_failed_with_a_reason(database_url):
    store = JobStore(database_url)
    job = new_job(store)
    assert store.claim(job.id, "dead-worker")
    assert store.recover_stale(stale_after=60, max_attempts=2) == {"requeued": [], "failed": []}
    assert store.recover_stale(stale_after=0, max_attempts=2)["requeued"] == [job.id]
    requeued = store.get(job.id)
    assert requeued.status == "queued" and "worker stopped" in requeued.error
    assert store.claim(job.id, "another-dead-worker")
    assert store.recover_stale(stale_after=0, max_attempts=2)["failed"] == [job.id]
    failed = store.get(job.id)
    assert failed.status == "failed" and "server stopped while generating, 2 times" in failed.error


def test_restart_runs_queued_jobs_and_recovers_running_ones(
    tmp_path, tiny_model_dir, tiny_loaded, database_url
):
    settings = make_settings(
        tmp_path, tiny_model_dir, jobs={"stale_after": 0}, database_url=database_url
    )
    # The first server accepted three jobs and died while running one of them, twice over for
    # another: nothing of it is left but its database.
    before = JobStore(settings.database_url)
    queued = new_job(before, "queued before the crash")
    running = new_job(before, "running at the crash")
    exhausted = new_job(before, "crashed twice")
    assert before.claim(running.id, "dead") and before.claim(exhausted.id, "dead")
    assert before.requeue(exhausted.id, "first crash") and before.claim(exhausted.id, "dead")
    before.close()

    with TestClient(create_app(settings, served(tiny_loaded))) as client:
        assert client.get("/health/ready").json()["detail"]["database"] == "ok"
        assert wait_for(client, queued.id)["status"] == "succeeded"
        job = wait_for(client, running.id)
        assert job["status"] == "succeeded" and job["attempts"] == 2
        job = wait_for(client, exhausted.id)
        assert job["status"] == "failed" and "server stopped while generating" in job["error"]
        assert client.get(f"/v1/generations/{queued.id}/audio").status_code == 200


def test_retention_deletes_old_audio_and_the_job_says_so(tmp_path, tiny_model_dir, tiny_loaded):
    settings = make_settings(tmp_path, tiny_model_dir)
    with TestClient(create_app(settings, served(tiny_loaded))) as client:
        job_id = client.post("/v1/generations", json={"prompt": "a", "duration": 0.2}).json()["id"]
        wait_for(client, job_id)
        svc = client.app.state.service
        key = audio_key(job_id, "wav")
        assert svc.audio.exists(key)
        assert delete_expired_audio(svc.store, svc.audio, retention_seconds=3600) == 0
        time.sleep(0.05)
        assert delete_expired_audio(svc.store, svc.audio, retention_seconds=0.01) == 1
        assert not svc.audio.exists(key)
        gone = client.get(f"/v1/generations/{job_id}/audio")
        assert gone.status_code == 410 and "expired" in gone.json()["detail"]
        assert client.get(f"/v1/generations/{job_id}").json()["audio_expired"] is True


def test_nothing_from_a_request_becomes_a_path(tmp_path):
    assert is_job_id("3f2b8c1e-9d4a-4c6b-8e2f-1a2b3c4d5e6f")
    for bad in (
        "../../etc/passwd",
        "3F2B8C1E-9D4A-4C6B-8E2F-1A2B3C4D5E6F",
        "",
        "a" * 36,
        None,
        "3f2b8c1e9d4a4c6b8e2f1a2b3c4d5e6f",
    ):
        assert not is_job_id(bad)
        with pytest.raises(ValueError):
            audio_key(bad, "wav")
    with pytest.raises(ValueError):
        audio_key("3f2b8c1e-9d4a-4c6b-8e2f-1a2b3c4d5e6f", "../x")
    store = AudioStore(tmp_path / "audio")
    with pytest.raises(ValueError):
        store.get("../jobs.db")
    # Any fsspec URL works as the audio store, e.g. memory:// (s3:// with s3fs installed).
    remote = AudioStore("memory://musicgen-test/audio")
    key = audio_key("3f2b8c1e-9d4a-4c6b-8e2f-1a2b3c4d5e6f", "flac")
    remote.put(key, b"data")
    assert remote.get(key) == b"data" and remote.exists(key)
    remote.delete(key)
    assert not remote.exists(key)


def test_shutdown_requeues_the_running_job_and_the_next_start_runs_it(
    tmp_path, tiny_model_dir, tiny_loaded
):
    settings = make_settings(tmp_path, tiny_model_dir)
    with TestClient(create_app(settings, served(tiny_loaded))) as client:
        job_id = client.post("/v1/generations", json={"prompt": "a", "duration": 2.0}).json()["id"]
        wait_for(client, job_id, states=("running",))
    # The app shut down mid-generation: the job went back to the queue, with the reason.
    store = JobStore(settings.database_url)
    job = store.get(job_id)
    assert (
        job.status == "queued" and job.error == "re-queued: the server shut down while generating"
    )
    store.close()
    with TestClient(create_app(settings, served(tiny_loaded))) as client:
        job = wait_for(client, job_id)
        assert job["status"] == "succeeded" and job["attempts"] == 2
