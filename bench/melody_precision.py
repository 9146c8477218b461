"""A melody model at each ``generation.precision``, side by side in one run.

    python bench/melody_precision.py                          # fp32, int8, int4; 3 s; 1 thread
    python bench/melody_precision.py --precisions fp32,int8 --seconds 5 --threads 2

A ``MusicgenMelodyForConditionalGeneration`` with random weights: musicgen-small's decoder
(24 layers of 1024; the real musicgen-melody is 48 of 1536, so its steps cost ~3x these), a
T5-base-sized text encoder, the 32 kHz EnCodec, the chroma prefix of 235 frames. Batch 1, CFG
3.0, top-k 250, the null chroma (the same prefix length as a melody), one seed, through
``GenerationEngine.generate`` as ``musicgen-train generate`` runs it: transformers' ``generate``
on ``engine.generation_model()``. One JSON line per precision: setup (the conversion) and
generation in CPU seconds (``time.process_time()``) and wall seconds, and steps per CPU-second;
then one line of ratios against fp32 from the same run.
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

from generate import GUIDANCE, PROMPT, TOP_K, cpu_flags, random_weights  # noqa: E402

from musicgen_train.generation import GenerationEngine, GenerationParams  # noqa: E402
from musicgen_train.model.loader import LoadedModel  # noqa: E402


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def build_melody_model() -> LoadedModel:
    from transformers import MusicgenMelodyConfig, MusicgenMelodyForConditionalGeneration
    from transformers.models.musicgen_melody import MusicgenMelodyDecoderConfig

    from musicgen_train.model.chroma import ChromaExtractor
    from musicgen_train.model.shapes import (
        encodec_32khz_config,
        musicgen_small_decoder_config,
        t5_base_text_config,
    )
    from musicgen_train.model.tiny_families import build_tiny_family_processor

    chroma = ChromaExtractor()
    decoder = MusicgenMelodyDecoderConfig(**musicgen_small_decoder_config().to_dict())
    config = MusicgenMelodyConfig(
        text_encoder=t5_base_text_config().to_dict(),
        audio_encoder=encodec_32khz_config().to_dict(),
        decoder=decoder.to_dict(),
        num_chroma=chroma.num_chroma,
        chroma_length=chroma.frames(chroma.chunk_length * chroma.sampling_rate),
    )
    model = random_weights(MusicgenMelodyForConditionalGeneration, config)
    processor = build_tiny_family_processor("tiny-melody")
    return LoadedModel(model=model, processor=processor, source="shape", path="shape")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--precisions", default="fp32,int8,int4")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    emit(kind="machine", flags=cpu_flags(), torch=torch.__version__, threads=args.threads)
    loaded = build_melody_model()
    params = GenerationParams(duration=args.seconds, seed=1, guidance_scale=GUIDANCE, top_k=TOP_K)
    steps = params.generate_kwargs(loaded.frame_rate, 4)["max_new_tokens"]
    rates = {}
    for precision in args.precisions.split(","):
        cpu, wall = time.process_time(), time.perf_counter()
        engine = GenerationEngine(loaded, precision=precision, threads=args.threads)
        engine.generation_model()  # the casts of a 16-bit body are part of the setup
        setup = (time.process_time() - cpu, time.perf_counter() - wall)
        cpu, wall = time.process_time(), time.perf_counter()
        engine.generate([PROMPT], params)
        run = (time.process_time() - cpu, time.perf_counter() - wall)
        rates[precision] = steps / run[0]
        emit(
            kind="melody",
            precision=precision,
            seconds=args.seconds,
            steps=steps,
            setup_cpu_s=round(setup[0], 2),
            setup_wall_s=round(setup[1], 2),
            generate_cpu_s=round(run[0], 2),
            generate_wall_s=round(run[1], 2),
            steps_per_cpu_s=round(rates[precision], 2),
        )
        del engine
    if "fp32" in rates:
        emit(
            kind="ratios",
            vs="fp32",
            **{p: round(r / rates["fp32"], 2) for p, r in rates.items() if p != "fp32"},
        )


if __name__ == "__main__":
    main()
