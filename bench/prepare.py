"""How fast does `musicgen-train prepare` turn audio into tokens on this CPU?

Prints one JSON object per line: seconds of audio prepared per wall-clock second (decode,
validate, downmix, resample with soxr, segment, encode, write shards and manifest) for the tiny
codec and for a codec of MusicGen's real EnCodec shape (facebook/encodec_32khz: 32 kHz, hidden
128, 64 filters, ratios 8-5-4-4, 2 LSTM layers, 4 codebooks of 2048; random weights), encoding
segments in batches vs one at a time, with 1 and 2 torch threads. Model loading is not timed;
every run starts from an empty cache. The modes run side by side, alternating, and each keeps its
best of ``--repeats``. The real-shape codec gets less audio (it is ~50x heavier).

    python bench/prepare.py [--files 8] [--seconds 10] [--real-files 4] [--real-seconds 5]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from transformers import MusicgenConfig, MusicgenDecoderConfig

from musicgen_train.config import load_config
from musicgen_train.data.encode import CodecEncoder
from musicgen_train.data.prepare import prepare
from musicgen_train.model.shapes import encodec_32khz_config
from musicgen_train.model.tiny import tiny_config
from musicgen_train.sources import load_musicgen


def write_inputs(folder: Path, files: int, seconds: float) -> float:
    """Stereo 44.1 kHz music-like files (so downmix and resampling are part of the work)."""
    rate = 44100
    rng = np.random.default_rng(0)
    for i in range(files):
        t = np.arange(int(seconds * rate)) / rate
        chord = sum(np.sin(2 * np.pi * f * (1 + 0.5 * i) * t) for f in (110, 138.6, 164.8))
        beat = (np.sin(2 * np.pi * 2 * t) > 0.9) * rng.standard_normal(t.size)
        left = 0.2 * chord + 0.1 * beat
        sf.write(folder / f"song{i:02d}.wav", np.stack([left, 0.8 * left], 1), rate)
    return files * seconds


def real_shape_encoder() -> CodecEncoder:
    """A MusicGen whose codec has facebook/encodec_32khz's shape (tiny text side, random init)."""
    tiny = tiny_config()
    audio = encodec_32khz_config()
    decoder = MusicgenDecoderConfig(
        vocab_size=2048, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
        ffn_dim=128, num_codebooks=4, pad_token_id=2048, bos_token_id=2048,
    )  # fmt: skip
    config = MusicgenConfig(text_encoder=tiny.text_encoder, audio_encoder=audio, decoder=decoder)
    from transformers import MusicgenForConditionalGeneration

    torch.manual_seed(0)
    model = MusicgenForConditionalGeneration(config).eval()
    return CodecEncoder(model, "encodec_32khz-shape (random weights)")


def one_run(source: Path, work: Path, encoder: CodecEncoder, batch: int, segment: float) -> float:
    output = Path(tempfile.mkdtemp(dir=work))
    cfg = load_config(
        [
            "data=folder",
            f"data.source={source}",
            f"data.output={output}",
            f"data.segment_seconds={segment}",
            f"data.encode_batch_size={batch}",
            "data.valid_fraction=0.1",
            "data.progress=false",
            "model=tiny",
        ],
        validate=False,
    )
    start = time.perf_counter()
    report = prepare(cfg, encoder=encoder)
    elapsed = time.perf_counter() - start
    assert report["files_encoded"] == report["files_ok"] > 0
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--real-files", type=int, default=4)
    parser.add_argument("--real-seconds", type=float, default=5.0)
    parser.add_argument("--segment", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", default="1,2", help="torch thread counts to measure")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    os.environ.setdefault("MUSICGEN_TRAIN_CACHE", str(work / "models"))
    codecs = {
        "tiny": (CodecEncoder(load_musicgen("tiny").model, "tiny"), args.files, args.seconds),
        "encodec_32khz_shape": (real_shape_encoder(), args.real_files, args.real_seconds),
    }
    for (name, (encoder, files, seconds)), threads in itertools.product(
        codecs.items(), [int(t) for t in args.threads.split(",")]
    ):
        torch.set_num_threads(threads)
        source = work / f"audio-{name}"
        source.mkdir(exist_ok=True)
        audio_seconds = write_inputs(source, files, seconds)
        best = {"batched": float("inf"), "one_at_a_time": float("inf")}
        sizes = {"batched": args.batch, "one_at_a_time": 1}
        one_run(source, work, encoder, args.batch, args.segment)  # warm-up (first-call costs)
        for _ in range(args.repeats):
            for mode, size in sizes.items():
                elapsed = one_run(source, work, encoder, size, args.segment)
                best[mode] = min(best[mode], elapsed)
        for mode, elapsed in best.items():
            print(
                json.dumps(
                    {
                        "bench": "prepare",
                        "codec": name,
                        "mode": mode,
                        "encode_batch_size": sizes[mode],
                        "files": files,
                        "audio_seconds": audio_seconds,
                        "segment_seconds": args.segment,
                        "wall_seconds": round(elapsed, 3),
                        "audio_seconds_per_second": round(audio_seconds / elapsed, 2),
                        "torch_threads": torch.get_num_threads(),
                        "load_average_1min": round(os.getloadavg()[0], 2),
                    }
                ),
                flush=True,
            )
        print(
            json.dumps(
                {
                    "bench": "prepare_batched_speedup",
                    "codec": name,
                    "torch_threads": threads,
                    "batched_over_one_at_a_time": round(best["one_at_a_time"] / best["batched"], 2),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
