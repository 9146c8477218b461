"""Where a decode step's time goes, and the floor its kernels set for a 30 s clip.

    python bench/step_parts.py                              # int8 and int4, 1 and 2 threads
    python bench/step_parts.py --precisions int8 --threads 2

musicgen-small's shape with random weights (bench/generate.py's ``build_model``), batch 1 with
CFG (two cache slots), top-k 250. For each precision and thread count, at cache lengths 0, 750
and 1500, one ``DecodeLoop.step`` is recorded: every Linear module it calls (with its input) and
every attention call (with its query and its views of the cache). Then, timed apart, each
``step`` line reports wall and CPU milliseconds of:

- ``step``: the whole ``DecodeLoop.step``, as generation runs it;
- ``linears``: the recorded Linear calls replayed (the modules as the step calls them: for
  int8 the per-row scaling around fbgemm's kernel, for int4 torch's int4 kernel);
- ``attention``: the recorded attention calls replayed (self-attention over the cache and
  cross-attention over the prompt, torch's SDPA);
- ``other``: step minus both (norms, GELU, cache writes, sampling, Python and op dispatch).

A ``clip`` line integrates them over the 1503 steps of 30 s (trapezoid) and gives
``kernels_floor_s``: the decoder's time for the clip if everything but the Linears and the
attention cost nothing. If that floor alone is above the 60 s target, no change to the loop's
Python can meet it on this machine with these kernels.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from generate import CLIP_STEPS, EngineStep, _prepare, build_model, cpu_flags  # noqa: E402

LENGTHS = (0, 750, CLIP_STEPS - 3)


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def record(step: EngineStep) -> tuple[list, list]:
    """One step, recording ``(module, input)`` for each Linear and ``(args, kwargs)`` for each
    attention call."""
    linears, attentions = [], []
    loop = step.loop
    attention = loop.attention

    def spy(*args, **kwargs):
        attentions.append((args, kwargs))
        return attention(*args, **kwargs)

    def hook(module, inputs, output):
        linears.append((module, inputs[0]))

    handles = [
        module.register_forward_hook(hook)
        for module in loop.causal_lm.modules()
        if type(module).__name__.endswith("Linear")
    ]
    loop.attention = spy
    try:
        step()
    finally:
        loop.attention = attention
        for handle in handles:
            handle.remove()
    return linears, [(attention, args, kwargs) for args, kwargs in attentions]


def timed(run, repeats: int) -> tuple[float, float]:
    """Milliseconds per call of ``run``: (wall, CPU), after one warm-up call."""
    run()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(repeats):
        run()
    return (
        (time.perf_counter() - wall) / repeats * 1e3,
        (time.process_time() - cpu) / repeats * 1e3,
    )


@torch.inference_mode()
def parts(model, processor, decoder, precision: str, length: int, repeats: int) -> dict:
    step = EngineStep(model, processor, decoder, 1, length, precision)
    linears, attentions = record(step)

    def replay_linears():
        for module, x in linears:
            module(x)

    def replay_attention():
        for function, args, kwargs in attentions:
            function(*args, **kwargs)

    whole = timed(step, repeats)
    linear = timed(replay_linears, repeats)
    attention = timed(replay_attention, repeats)
    return {
        "step": whole,
        "linears": linear,
        "attention": attention,
        "other": tuple(w - a - b for w, a, b in zip(whole, linear, attention, strict=True)),
        "linear_calls": len(linears),
        "attention_calls": len(attentions),
    }


def integrate(values: list[float]) -> float:
    """Mean over the clip's steps from values at ``LENGTHS`` (trapezoid)."""
    total = sum(
        (LENGTHS[i + 1] - LENGTHS[i]) * (values[i] + values[i + 1]) / 2
        for i in range(len(LENGTHS) - 1)
    )
    return total / (LENGTHS[-1] - LENGTHS[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--precisions", default="int8,int4")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    emit(kind="machine", flags=cpu_flags(), torch=torch.__version__)
    model, processor = build_model()
    for precision in args.precisions.split(","):
        decoder = _prepare(model.decoder, precision)
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            rows = []
            for length in LENGTHS:
                row = parts(model, processor, decoder, precision, length, args.repeats)
                rows.append(row)
                emit(
                    kind="step",
                    precision=precision,
                    threads=threads,
                    cache_length=length,
                    linear_calls=row["linear_calls"],
                    attention_calls=row["attention_calls"],
                    **{
                        f"{part}_{clock}_ms": round(row[part][i], 1)
                        for part in ("step", "linears", "attention", "other")
                        for i, clock in enumerate(("wall", "cpu"))
                    },
                )
            mean = {
                part: integrate([row[part][0] for row in rows])
                for part in ("step", "linears", "attention", "other")
            }
            emit(
                kind="clip",
                precision=precision,
                threads=threads,
                **{f"{part}_wall_ms": round(value, 1) for part, value in mean.items()},
                decoder_s=round(mean["step"] * CLIP_STEPS / 1e3, 1),
                kernels_floor_s=round((mean["linears"] + mean["attention"]) * CLIP_STEPS / 1e3, 1),
            )


if __name__ == "__main__":
    main()
