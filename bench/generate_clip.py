"""One whole 30 s clip of musicgen-small's shape, end to end, timed part by part.

    python bench/generate_clip.py                   # precision=auto, 1 thread
    python bench/generate_clip.py --threads 2 --seconds 30 --precision int8

Random weights of musicgen-small's shape (bench/generate.py's ``build_model``; nothing is
downloaded), batch 1, CFG 3.0, top-k 250, through ``GenerationEngine`` as ``musicgen-train
generate`` uses it. Reported (one JSON object per line), CPU seconds (``time.process_time()``,
all threads of this process) and wall seconds for:

- ``setup``: the engine (precision conversion of the decoder);
- ``prefill``: the row joining the loop (T5, projection, cross-attention K/V);
- ``decoder``: every decode step of the clip (1503 for 30 s);
- ``codec``: EnCodec's decode of the codes through the engine (``FastCodecDecoder``), and,
  side by side on the same codes, the codec's own ``decode`` (the baseline; not counted in the
  total);
- ``total``: setup + prefill + decoder + codec, against the 60 s target.
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

from generate import GUIDANCE, PROMPT, TOP_K, build_model, cpu_flags  # noqa: E402

from musicgen_train.generation import GenerationEngine, GenerationParams  # noqa: E402
from musicgen_train.model.loader import LoadedModel  # noqa: E402


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


class Clock:
    def __init__(self):
        self.cpu, self.wall = time.process_time(), time.perf_counter()

    def read(self) -> dict:
        return {
            "cpu_s": round(time.process_time() - self.cpu, 2),
            "wall_s": round(time.perf_counter() - self.wall, 2),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--no-baseline", action="store_true", help="skip the plain codec decode")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    model, processor = build_model()
    loaded = LoadedModel(model=model, processor=processor, source="shape", path="shape")
    emit(kind="machine", flags=cpu_flags(), threads=args.threads, torch=torch.__version__)
    parts = {}
    clock = Clock()
    engine = GenerationEngine(loaded, precision=args.precision, threads=args.threads)
    parts["setup"] = clock.read()
    params = GenerationParams(
        duration=args.seconds, guidance_scale=GUIDANCE, top_k=TOP_K, temperature=1.0, seed=1
    )
    with torch.inference_mode():
        clock = Clock()
        loop = engine.new_loop()
        row = engine.add(loop, PROMPT, params)
        parts["prefill"] = clock.read()
        clock = Clock()
        steps = 0
        while loop.rows:
            loop.step()
            steps += 1
        parts["decoder"] = {**clock.read(), "steps": steps}
        parts["decoder"]["cpu_ms_per_step"] = round(parts["decoder"]["cpu_s"] / steps * 1e3, 1)
        parts["decoder"]["wall_ms_per_step"] = round(parts["decoder"]["wall_s"] / steps * 1e3, 1)
        clock = Clock()
        audio = engine.decode([row])
        parts["codec"] = {**clock.read(), "samples": int(audio.shape[-1])}
        if not args.no_baseline:
            codes = row.codes()[None, None]  # [1, 1, K, frames]
            clock = Clock()
            plain = model.audio_encoder.decode(codes, audio_scales=[None]).audio_values
            parts["codec_plain_baseline"] = clock.read()
            parts["codec_plain_baseline"]["max_abs_difference"] = float(
                (torch.from_numpy(audio) - plain).abs().max()
            )
    for name, values in parts.items():
        emit(kind="part", part=name, precision=engine.precision, **values)
    counted = ("setup", "prefill", "decoder", "codec")
    emit(
        kind="total",
        what=f"{args.seconds:g} s clip, batch 1, CFG {GUIDANCE}, precision={engine.precision}",
        threads=args.threads,
        cpu_s=round(sum(parts[p]["cpu_s"] for p in counted), 1),
        wall_s=round(sum(parts[p]["wall_s"] for p in counted), 1),
        target_wall_s=60,
        real_time_factor=round(args.seconds / sum(parts[p]["wall_s"] for p in counted), 3),
    )


if __name__ == "__main__":
    main()
