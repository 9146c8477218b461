"""The inference service under load, on this machine: one JSON object per line.

1. Latency of the status and health endpoints with 100 concurrent clients, while the server is
   idle and while it generates (target: p99 < 200 ms during generation), for each way of running
   generation: in a child process (the default, at nice 10, and at the server's priority) and in
   a thread of the server (``serve.worker.isolation=thread``). The servers are up at once, and
   each phase is measured on one after the other.
2. Generation throughput with 1, 4 and 8 concurrent jobs, batched (``max_batch_size=8``) vs one
   by one (``max_batch_size=1``): two servers up at once, the cases alternating between them,
   each keeping its best of ``--repeats``.

3. A mixed workload (``--run mixed``), static batching (``serve.worker.scheduler=static``, the
   old behaviour) against continuous batching, one after the other in the same run on the same
   seeded workload: jobs arriving over time, durations 1 to 30 s with mixed seeds, temperatures,
   top-k, top-p and guidance, some streamed, some canceled, and 100 clients polling status and
   health meanwhile. Per scheduler: seconds of audio per wall second, p50/p99 job latency (all
   jobs and short ones), time to first streamed audio, status/health p99.

Each server is the real thing: ``musicgen-train serve`` (uvicorn) in its own process on
127.0.0.1, with its own temporary database and audio folder; clients are httpx.

    python bench/serve.py [--model tiny] [--duration 2.0] [--clients 100] [--rounds 5]
    python bench/serve.py --run mixed [--jobs 24] [--arrival-seconds 10] [--precision auto]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx
import numpy as np

FINISHED = ("succeeded", "failed", "canceled")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


PIDS: dict[str, int] = {}  # base URL -> its server's process id


@contextlib.contextmanager
def server(model: str, *overrides: str, code: str | None = None):
    """``code``: a source tree whose ``musicgen_train`` this server runs (a baseline)."""
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="musicgen-serve-bench-"))
    command = [
        sys.executable,
        "-m",
        "musicgen_train.cli",
        "serve",
        f"model={model}",
        f"serve.port={port}",
        f"serve.database_url=sqlite:///{work}/jobs.db",
        f"serve.storage={work}/audio",
        "serve.rate_limit.requests=100000/minute",
        "serve.rate_limit.generations=100000/minute",
        "serve.log_level=warning",
        *overrides,
    ]
    env = {**os.environ, "MUSICGEN_TRAIN_HOME": str(work / "home"), "HF_HUB_OFFLINE": "1"}
    env.pop("MUSICGEN_SERVE_API_KEYS", None)
    if code is not None:  # ``-m`` puts the working folder first on sys.path: run from there
        env["PYTHONPATH"] = os.pathsep.join([code, env.get("PYTHONPATH", "")])
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, cwd=code)
    base = f"http://127.0.0.1:{port}"
    PIDS[base] = process.pid
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                raise SystemExit(f"server exited with {process.returncode}")
            try:
                if httpx.get(f"{base}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("server did not become ready")
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)  # its database, audio and home


def submit(base: str, count: int, duration: float) -> list[str]:
    """``count`` jobs posted at once (concurrently), as many clients would."""

    async def post_all():
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            body = {"prompt": "bench", "duration": duration}
            answers = await asyncio.gather(
                *(client.post("/v1/generations", json=body) for _ in range(count))
            )
        return [answer.json()["id"] for answer in answers]

    return asyncio.run(post_all())


def wait_all(base: str, ids: list[str]) -> list[dict]:
    with httpx.Client(base_url=base, timeout=60) as client:
        while True:
            jobs = [client.get(f"/v1/generations/{job_id}").json() for job_id in ids]
            if all(job["status"] in FINISHED for job in jobs):
                return jobs
            time.sleep(0.05)


async def load(base: str, clients: int, rounds: int, job_id: str) -> dict[str, list[float]]:
    """``clients`` concurrent clients (aiohttp: httpx's pool is itself slow at this
    concurrency), each asking for status, liveness and readiness ``rounds`` times."""
    times: dict[str, list[float]] = {"status": [], "health": [], "ready": []}
    paths = {"status": f"/v1/generations/{job_id}", "health": "/health", "ready": "/health/ready"}
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(base, connector=connector) as session:

        async def one_client():
            for _ in range(rounds):
                for name, path in paths.items():
                    started = time.perf_counter()
                    async with session.get(path) as response:
                        await response.read()
                    times[name].append(time.perf_counter() - started)
                    if response.status != 200:
                        raise SystemExit(f"{path}: {response.status}")

        await asyncio.gather(*(one_client() for _ in range(clients)))
    return times


# label -> the server's overrides; every one runs generation on one torch thread.
ISOLATION = {
    "process_nice10": ("serve.worker.isolation=process", "serve.worker.nice=10"),
    "process_nice0": ("serve.worker.isolation=process", "serve.worker.nice=0"),
    "thread": ("serve.worker.isolation=thread",),
}


def latency(args) -> None:
    """With ``--baseline DIR``: that code against this one (default settings), the generating
    phase alternating between them ``--repeats`` times; else the three ways of running
    generation."""
    if args.baseline:
        setups = {"baseline": ((), args.baseline), "current": ((), None)}
    else:
        setups = {label: (overrides, None) for label, overrides in ISOLATION.items()}
    with contextlib.ExitStack() as stack:
        bases = {}
        for label, (overrides, code) in setups.items():
            base = stack.enter_context(
                server(args.model, "serve.worker.torch_threads=1", *overrides, code=code)
            )
            idle_job = wait_all(base, submit(base, 1, 0.5))[0]["id"]
            asyncio.run(load(base, args.clients, 1, idle_job))  # warm up connections and routes
            bases[label] = (base, idle_job)
        phases = ["idle"] + ["generating"] * (args.repeats if args.baseline else 1)
        for phase in phases:
            for label, (base, idle_job) in bases.items():
                measure(args, base, phase, label, idle_job)


def measure(args, base: str, phase: str, label: str, idle_job: str) -> None:
    job_id = idle_job
    if phase == "generating":
        # Long enough to outlast the load; checked below.
        job_id = submit(base, 1, args.long_duration)[0]
        while httpx.get(f"{base}/v1/generations/{job_id}").json()["status"] == "queued":
            time.sleep(0.01)
    times = asyncio.run(load(base, args.clients, args.rounds, job_id))
    still = httpx.get(f"{base}/v1/generations/{job_id}").json()["status"]
    for endpoint, values in times.items():
        ms = np.array(values) * 1000
        print(
            json.dumps(
                {
                    "bench": "serve_latency",
                    "model": args.model,
                    "phase": phase,
                    "generation_in": label,
                    "endpoint": endpoint,
                    "clients": args.clients,
                    "requests": len(ms),
                    "p50_ms": round(float(np.percentile(ms, 50)), 1),
                    "p99_ms": round(float(np.percentile(ms, 99)), 1),
                    "max_ms": round(float(ms.max()), 1),
                    "generation_still_running": phase == "generating" and still == "running",
                }
            ),
            flush=True,
        )
    if phase == "generating":
        wait_all(base, [job_id])


def generate_calls(base: str) -> float:
    """How many generate calls the server has made (its ``musicgen_batch_size`` count)."""
    text = httpx.get(f"{base}/metrics").text
    line = next(x for x in text.splitlines() if x.startswith("musicgen_batch_size_count"))
    return float(line.split()[-1])


def throughput(args) -> None:
    """Both servers run at once; each case alternates between them and keeps its best time."""
    modes = {"batched": args.max_batch, "one_by_one": 1}
    with contextlib.ExitStack() as stack:
        bases = {}
        for mode, batch in modes.items():
            overrides = (
                "serve.worker.torch_threads=1",
                f"serve.worker.max_batch_size={batch}",
                "serve.worker.batch_wait=0.1",
            )
            bases[mode] = stack.enter_context(server(args.model, *overrides))
            wait_all(bases[mode], submit(bases[mode], 1, args.duration))  # warm-up
        for jobs in (1, 4, 8):
            best: dict[str, tuple[float, float, int]] = {}
            for _ in range(args.repeats):
                for mode, base in bases.items():
                    calls = generate_calls(base)
                    started = time.perf_counter()
                    finished = wait_all(base, submit(base, jobs, args.duration))
                    wall = time.perf_counter() - started
                    ok = sum(job["status"] == "succeeded" for job in finished)
                    calls = generate_calls(base) - calls
                    if mode not in best or wall < best[mode][0]:
                        best[mode] = (wall, calls, ok)
            for mode, (wall, calls, ok) in best.items():
                print(
                    json.dumps(
                        {
                            "bench": "serve_throughput",
                            "model": args.model,
                            "mode": mode,
                            "concurrent_jobs": jobs,
                            "duration_s": args.duration,
                            "succeeded": ok,
                            "generate_calls": int(calls),
                            "wall_s": round(wall, 2),
                            "jobs_per_s": round(jobs / wall, 3),
                            "audio_s_per_s": round(jobs * args.duration / wall, 3),
                            "speedup_vs_one_by_one": round(best["one_by_one"][0] / wall, 2),
                        }
                    ),
                    flush=True,
                )


# --- the mixed workload: static vs continuous batching ------------------------------------------

DURATIONS = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
SHORT = 4.0  # jobs of at most this many seconds count as short


def workload(args) -> list[dict]:
    """The same jobs for both schedulers: arrival time, request body, streamed, canceled."""
    rng = np.random.default_rng(args.seed)
    arrivals = np.sort(rng.uniform(0, args.arrival_seconds, args.jobs))
    jobs = []
    for index, at in enumerate(arrivals):
        body = {
            "prompt": f"mixed job {index}",
            "duration": float(rng.choice(args.durations)),
            "temperature": float(rng.choice([0.8, 1.0, 1.2])),
            "top_k": int(rng.choice([50, 250])),
            "top_p": float(rng.choice([0.0, 0.9])),
            "guidance_scale": float(rng.choice([1.0, 3.0])),
        }
        if rng.random() < 0.5:
            body["seed"] = int(rng.integers(0, 2**31))
        kind = rng.choice(["plain", "streamed", "canceled"], p=[0.6, 0.3, 0.1])
        jobs.append({"at": float(at), "body": body, "kind": str(kind)})
    return jobs


async def run_job(client: httpx.AsyncClient, job: dict, t0: float) -> dict:
    await asyncio.sleep(max(0.0, t0 + job["at"] - time.perf_counter()))
    posted, first_audio = time.time(), None
    if job["kind"] == "streamed":
        async with client.stream("POST", "/v1/generations/stream", json=job["body"]) as answer:
            job_id = answer.headers["x-generation-id"]
            received = 0
            async for chunk in answer.aiter_bytes():
                received += len(chunk)
                if first_audio is None and received > 44:  # past the WAV header
                    first_audio = time.time()
    else:
        job_id = (await client.post("/v1/generations", json=job["body"])).json()["id"]
        if job["kind"] == "canceled":
            await asyncio.sleep(1.0)
            await client.post(f"/v1/generations/{job_id}/cancel")
    while True:
        status = (await client.get(f"/v1/generations/{job_id}")).json()
        if status["status"] in FINISHED:
            break
        await asyncio.sleep(0.1)
    return {**job, "id": job_id, "status": status, "posted": posted, "first_audio": first_audio}


async def mixed_run(
    base: str, jobs: list[dict], clients: int, status_job: str
) -> tuple[list[dict], dict, float]:
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as client:
        t0 = time.perf_counter()
        tasks = [asyncio.create_task(run_job(client, job, t0)) for job in jobs]
        await asyncio.sleep(min(3.0, jobs[-1]["at"]))  # generating by now
        times = await load(base, clients, 2, status_job)
        done = await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
    return done, times, wall


def pct(values, q) -> float | None:
    return round(float(np.percentile(values, q)), 3) if len(values) else None


def mixed(args) -> None:
    jobs = workload(args)
    common = (
        "serve.worker.torch_threads=1",
        f"serve.worker.max_batch_size={args.max_batch}",
        f"serve.precision={args.precision}",
        "serve.queue.max_size=1000",
    )
    results = {}
    model = small_shape_folder() if args.model == "small-shape" else args.model
    try:
        for scheduler in ("static", "continuous"):
            results[scheduler] = mixed_one(args, jobs, model, common, scheduler)
    finally:
        if model != args.model:  # the saved small-shape folder (2.4 GB)
            shutil.rmtree(model, ignore_errors=True)
    report_ratio(args, results)


def mixed_one(args, jobs: list[dict], model: str, common: tuple, scheduler: str) -> dict:
    with server(model, *common, f"serve.worker.scheduler={scheduler}") as base:
        warm = wait_all(base, submit(base, 1, 0.5))[0]["id"]  # warm-up
        cpu0 = _descendants_cpu()
        done, times, wall = asyncio.run(mixed_run(base, jobs, args.clients, warm))
        cpu = _descendants_cpu() - cpu0
    ok = [j for j in done if j["status"]["status"] == "succeeded"]
    audio = sum(j["status"]["audio_seconds"] for j in ok)
    latency = [
        j["status"]["timings"]["finished_at"] - j["status"]["timings"]["created_at"] for j in ok
    ]
    short = [
        j["status"]["timings"]["finished_at"] - j["status"]["timings"]["created_at"]
        for j in ok
        if j["body"]["duration"] <= args.short_seconds
    ]
    first = [
        j["first_audio"] - j["status"]["timings"]["started_at"] for j in ok if j["first_audio"]
    ]
    first_posted = [j["first_audio"] - j["posted"] for j in ok if j["first_audio"]]
    row = {
        "bench": "serve_mixed",
        "model": args.model,
        "precision": args.precision,
        "scheduler": scheduler,
        "jobs": len(jobs),
        "durations": list(args.durations),
        "succeeded": len(ok),
        "canceled": sum(j["status"]["status"] == "canceled" for j in done),
        "failed": sum(j["status"]["status"] == "failed" for j in done),
        "audio_s": round(audio, 1),
        "wall_s": round(wall, 2),
        "audio_s_per_wall_s": round(audio / wall, 3),
        "audio_s_per_cpu_s": round(audio / cpu, 3) if cpu > 0 else None,
        "latency_p50_s": pct(latency, 50),
        "latency_p99_s": pct(latency, 99),
        "latency_p50_by_duration_s": {
            str(d): pct(
                [x for j, x in zip(ok, latency, strict=True) if j["body"]["duration"] == d], 50
            )
            for d in sorted({j["body"]["duration"] for j in ok})
        },
        "short_s": args.short_seconds,
        "short_latency_p50_s": pct(short, 50),
        "first_audio_after_start_p50_s": pct(first, 50),
        "first_audio_after_start_max_s": round(max(first), 3) if first else None,
        "first_audio_after_post_p50_s": pct(first_posted, 50),
        "status_p99_ms": pct(np.array(times["status"]) * 1000, 99),
        "health_p99_ms": pct(np.array(times["health"]) * 1000, 99),
    }
    print(json.dumps(row), flush=True)
    return row


def report_ratio(args, results: dict) -> None:
    static, continuous = results["static"], results["continuous"]
    print(
        json.dumps(
            {
                "bench": "serve_mixed_ratio",
                "model": args.model,
                "throughput_continuous_over_static": round(
                    continuous["audio_s_per_wall_s"] / static["audio_s_per_wall_s"], 2
                ),
                "short_p50_static_over_continuous": round(
                    static["short_latency_p50_s"] / continuous["short_latency_p50_s"], 2
                ),
                "latency_p50_static_over_continuous": round(
                    static["latency_p50_s"] / continuous["latency_p50_s"], 2
                ),
            }
        ),
        flush=True,
    )


def _descendants_cpu(root: int | None = None) -> float:
    """CPU seconds (user + system) of the live descendants of ``root`` (default: this
    process): the servers and their generation processes; with ``root`` a server's pid, that
    server and its generation process."""
    tick = os.sysconf("SC_CLK_TCK")
    parents, cpu = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        cpu[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    mine = {os.getpid() if root is None else root}
    total = 0.0 if root is None else cpu.get(root, 0.0)
    changed = True
    while changed:
        changed = False
        for pid, parent in parents.items():
            if parent in mine and pid not in mine:
                mine.add(pid)
                total += cpu[pid]
                changed = True
    return total


# --- first streamed audio on musicgen-small's shape ---------------------------------------------


def small_shape_folder() -> str:
    """musicgen-small's shape with random weights (bench/generate.py's), saved as a model folder."""
    sys.path.insert(0, str(Path(__file__).parent))
    from generate import build_model

    folder = Path(tempfile.mkdtemp(prefix="musicgen-small-shape-"))
    model, processor = build_model()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def first_audio(args) -> None:
    """``--jobs`` streamed jobs posted at once; seconds from each job's start to its first PCM.
    With ``--baseline DIR`` (a source tree, e.g. ``git archive`` of an older commit) a second
    server runs that code with the same settings: both load first, then the rounds alternate
    between them (one at a time), so both see the same machine."""
    model = small_shape_folder() if args.model == "small-shape" else args.model
    overrides = (
        "serve.worker.torch_threads=1",
        f"serve.precision={args.precision}",
        f"serve.worker.max_batch_size={args.max_batch}",
        *args.override,
    )
    jobs = [
        {"at": 0.0, "kind": "streamed", "body": {"prompt": f"p{i}", "duration": args.duration}}
        for i in range(args.jobs)
    ]

    async def run_all(base):
        async with httpx.AsyncClient(base_url=base, timeout=900) as client:
            t0 = time.perf_counter()
            return await asyncio.gather(*(run_job(client, job, t0) for job in jobs))

    codes = {"current": None}
    if args.baseline:
        codes = {"baseline": args.baseline, **codes}
    try:
        with contextlib.ExitStack() as stack:
            bases = {
                label: stack.enter_context(server(model, *overrides, code=code))
                for label, code in codes.items()
            }
            for base in bases.values():  # warm-up: one short streamed job each
                asyncio.run(run_all_short(base))
            for round_ in range(args.repeats):
                for label, base in bases.items():
                    cpu0, wall0 = _descendants_cpu(PIDS[base]), time.perf_counter()
                    done = asyncio.run(run_all(base))
                    wall = time.perf_counter() - wall0
                    cpu = _descendants_cpu(PIDS[base]) - cpu0
                    print(json.dumps(first_audio_row(args, label, round_, done, wall, cpu)))
    finally:
        if model != args.model:  # the saved small-shape folder (2.4 GB)
            shutil.rmtree(model, ignore_errors=True)


async def run_all_short(base: str) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=900) as client:
        job = {"at": 0.0, "kind": "streamed", "body": {"prompt": "warm", "duration": 0.5}}
        await run_job(client, job, time.perf_counter())


def first_audio_row(args, label: str, round_: int, done: list, wall: float, cpu: float) -> dict:
    first = [j["first_audio"] - j["status"]["timings"]["started_at"] for j in done]
    whole = [j["status"]["timings"]["generation_seconds"] for j in done]
    audio = sum(j["status"].get("audio_seconds") or 0.0 for j in done)
    return {
        "bench": "serve_first_audio",
        "code": label,
        "round": round_,
        "model": args.model,
        "precision": args.precision,
        "overrides": args.override,
        "concurrent_streamed_jobs": len(done),
        "duration_s": args.duration,
        "succeeded": sum(j["status"]["status"] == "succeeded" for j in done),
        "first_audio_after_start_s": sorted(round(x, 2) for x in first),
        "first_audio_max_s": round(max(first), 2),
        # when each job started (was claimed) and first sounded, from its request
        "started_after_post_s": [
            round(j["status"]["timings"]["started_at"] - j["posted"], 2) for j in done
        ],
        "first_audio_after_post_s": [round(j["first_audio"] - j["posted"], 2) for j in done],
        "generation_s": sorted(round(x, 1) for x in whole),
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),  # the server and its generation process
        "audio_s_per_cpu_s": round(audio / cpu, 3) if cpu > 0 else None,
        "audio_s_per_wall_s": round(audio / wall, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per job")
    parser.add_argument(
        "--long-duration",
        type=float,
        default=20.0,
        help="seconds of the job generated during the latency load",
    )
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="throughput: best of")
    parser.add_argument("--skip", choices=["latency", "throughput"], default=None)
    parser.add_argument(
        "--run",
        default="latency,throughput",
        help="comma-separated: latency,throughput,mixed,first-audio "
        "(--model small-shape: musicgen-small's shape, random weights)",
    )
    parser.add_argument("--jobs", type=int, default=24, help="mixed: jobs in the workload")
    parser.add_argument("--arrival-seconds", type=float, default=10.0, help="mixed: arrivals over")
    parser.add_argument("--precision", default="auto", help="mixed: serve.precision")
    parser.add_argument("--seed", type=int, default=0, help="mixed: the workload's seed")
    parser.add_argument(
        "--short-seconds", type=float, default=SHORT, help="mixed: jobs this long count as short"
    )
    parser.add_argument(
        "--durations",
        type=lambda text: tuple(float(x) for x in text.split(",")),
        default=DURATIONS,
        help="mixed: comma-separated job durations to draw from (seconds)",
    )
    parser.add_argument(
        "--override", action="append", default=[], help="first-audio: a serve.* override"
    )
    parser.add_argument(
        "--baseline",
        default=None,
        help="first-audio, latency: a source tree (older code) to run side by side",
    )
    args = parser.parse_args()
    runs = set(args.run.split(","))
    if "latency" in runs and args.skip != "latency":
        latency(args)
    if "throughput" in runs and args.skip != "throughput":
        throughput(args)
    if "mixed" in runs:
        mixed(args)
    if "first-audio" in runs:
        first_audio(args)


if __name__ == "__main__":
    main()
