"""Long form's seams: spectral flux at the joins against within-window frames (tiny model).

    python bench/long_form.py                  # 4 seeds, 6 s in windows of 1.0 s, stride 0.6 s
    python bench/long_form.py --seeds 8 --duration 10

For each seed the tiny model (random weights, random codec: its audio is buzz) makes the clip
twice: long form (windows continuing the previous window's last codes) and in one pass (one
window as long as the clip, the model's positions allow it). The one-pass clip, measured at the
same sample positions, is the control: a seam that joins cleanly has the flux ratio the control
has there. One JSON object per line; the last line sums the seeds up. CPU seconds are one torch
thread's ``time.process_time()``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from musicgen_train.generation import GenerationEngine, GenerationParams  # noqa: E402
from musicgen_train.generation.long_form import plan, seam_flux, seam_samples  # noqa: E402
from musicgen_train.generation.rows import frames_for  # noqa: E402
from musicgen_train.model.tiny import ensure_tiny_model  # noqa: E402
from musicgen_train.sources import load_musicgen  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--window", type=float, default=1.0)
    parser.add_argument("--stride", type=float, default=0.6)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    loaded = load_musicgen(str(ensure_tiny_model(seed=0)))
    long_engine = GenerationEngine(
        loaded, precision="fp32", window_seconds=args.window, extend_stride=args.stride
    )
    one_pass = GenerationEngine(loaded, precision="fp32", window_seconds=args.duration)
    rate, hop = loaded.frame_rate, int(round(loaded.sample_rate / loaded.frame_rate))
    steps = plan(
        frames_for(args.duration, rate),
        frames_for(args.window, rate),
        frames_for(args.stride, rate),
    )
    seams = seam_samples(steps, hop)
    totals = {"long": [], "control": [], "cpu_long": 0.0, "cpu_one": 0.0}
    for seed in range(args.seeds):
        params = GenerationParams(duration=args.duration, top_k=250, seed=seed)
        cpu = time.process_time()
        audio = long_engine.generate(["ambient pad"], params)[0, 0]
        totals["cpu_long"] += time.process_time() - cpu
        cpu = time.process_time()
        control = one_pass.generate(["ambient pad"], params)[0, 0]
        totals["cpu_one"] += time.process_time() - cpu
        long, ref = seam_flux(audio, seams), seam_flux(control, seams)
        totals["long"].append(long["ratio"])
        totals["control"].append(ref["ratio"])
        print(json.dumps({"seed": seed, "seams": len(seams), "long_form": long, "one_pass": ref}))
    print(
        json.dumps(
            {
                "summary": "seam flux / within-window flux",
                "model": "tiny (random weights)",
                "duration_s": args.duration,
                "window_s": args.window,
                "stride_s": args.stride,
                "windows": len(steps),
                "long_form_ratio_mean": float(np.mean(totals["long"])),
                "long_form_ratio_max": float(np.max(totals["long"])),
                "one_pass_ratio_mean": float(np.mean(totals["control"])),
                "one_pass_ratio_max": float(np.max(totals["control"])),
                "cpu_s_long_form": round(totals["cpu_long"], 2),
                "cpu_s_one_pass": round(totals["cpu_one"], 2),
                "cpu_ratio_long_over_one_pass": round(totals["cpu_long"] / totals["cpu_one"], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
