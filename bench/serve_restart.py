"""How long the service waits for a generation process: the first start, and a replacement after
the process died (the hang detector's kill, a crash, the out-of-memory killer), with the
processes spawned (a fresh interpreter each) or forked from the fork server (the service's way,
``serve/generator.py``), side by side in one run. Prints one JSON object per start method, then
the ratios. Wall seconds from ``start()`` until the process has loaded its models and answered.

    python bench/serve_restart.py [--model tiny] [--replacements 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time

from musicgen_train.serve import generator
from musicgen_train.serve.settings import ModelSpec, StreamSettings


def measure(method: str, model: str, replacements: int) -> dict:
    """Seconds to the first ready process, and to each replacement of a killed one."""
    if method == "spawn":
        generator.start_context = lambda: multiprocessing.get_context("spawn")
    else:
        generator.start_context = original_start_context
    process = generator.ProcessGenerator([ModelSpec(name="m", source=model)], StreamSettings())
    started = time.perf_counter()
    process.start()
    first = time.perf_counter() - started
    again = []
    for _ in range(replacements):
        process.kill()  # dead, as the hang detector leaves it
        started = time.perf_counter()
        process.start()
        again.append(time.perf_counter() - started)
    process.stop()
    return {"first_s": round(first, 2), "replacement_s": round(statistics.median(again), 2)}


original_start_context = generator.start_context


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny", help="any model source the service takes")
    parser.add_argument("--replacements", type=int, default=3)
    options = parser.parse_args()
    results = {}
    for method in ("spawn", "forkserver"):
        results[method] = measure(method, options.model, options.replacements)
        print(json.dumps({"bench": "serve_restart", "method": method, **results[method]}))
    spawn, fork = results["spawn"], results["forkserver"]
    print(
        json.dumps(
            {
                "bench": "serve_restart",
                "replacement_spawn_over_forkserver": round(
                    spawn["replacement_s"] / fork["replacement_s"], 2
                ),
                "first_spawn_over_forkserver": round(spawn["first_s"] / fork["first_s"], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
