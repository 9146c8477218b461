"""Does prepare's memory grow with a file's length? Peak RSS for one long file vs a short one.

Each size runs in its own `prepare` process (tiny codec, 30 s segments, batches of 2: a
one-minute file fills a batch too, so the codec's activations are the same) on one synthetic stereo
44.1 kHz 16-bit WAV (so downmix and resampling are part of the work); the child reports its peak
resident memory (``ru_maxrss``), CPU seconds and wall seconds. Prints one JSON object per size,
then the growth per added minute of audio.

    python bench/prepare_memory.py [--minutes 1 60]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import json, resource, sys, time
from musicgen_train.config import load_config
from musicgen_train.data.prepare import prepare
cfg = load_config(sys.argv[1:])
wall, cpu = time.perf_counter(), time.process_time()
report = prepare(cfg)
print(json.dumps({
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
    "segments": report["totals"]["segments"],
}))
"""


def write_long_wav(path: Path, minutes: float, rate: int = 44100) -> None:
    """Written a minute at a time, so that the writer's own memory stays small."""
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", samplerate=rate, channels=2, subtype="PCM_16") as out:
        for minute in range(int(np.ceil(minutes))):
            seconds = min(60.0, minutes * 60 - minute * 60)
            t = minute * 60 + np.arange(int(seconds * rate)) / rate
            left = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.02 * rng.standard_normal(t.size)
            out.write(np.stack([left, 0.8 * left], axis=1).astype(np.float32))


def measure(minutes: float, work: Path, *extra: str) -> dict:
    folder = work / f"audio-{minutes}"
    folder.mkdir(parents=True, exist_ok=True)
    write_long_wav(folder / "long.wav", minutes)
    args = [
        "data=folder", f"++data.source={folder}", f"data.output={work / f'cache-{minutes}'}",
        "data.segment_seconds=30", "data.encode_batch_size=2", "data.progress=false",
        "data.valid_fraction=0", "model=tiny",
        *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, *args], env=env, capture_output=True, text=True, check=True
    )
    (folder / "long.wav").unlink()
    return {"minutes": minutes, **json.loads(out.stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 60])
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(m, Path(tmp)) for m in options.minutes]
    for result in results:
        print(json.dumps({"bench": "prepare_memory", **result}))
    first, last = results[0], results[-1]
    if last["minutes"] > first["minutes"]:
        growth = (last["peak_rss_mb"] - first["peak_rss_mb"]) / (last["minutes"] - first["minutes"])
        print(json.dumps({"bench": "prepare_memory", "growth_mb_per_minute": round(growth, 2)}))


if __name__ == "__main__":
    main()
