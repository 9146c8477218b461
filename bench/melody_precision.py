"""A melody model: transformers' ``generate`` against the engine at each ``generation.precision``,
side by side in one run.

    python bench/melody_precision.py                          # generate, fp32, int8, int4; 3 s
    python bench/melody_precision.py --precisions fp32,int8 --seconds 5 --threads 2

A ``MusicgenMelodyForConditionalGeneration`` with random weights: musicgen-small's decoder
(24 layers of 1024; the real musicgen-melody is 48 of 1536, so its steps cost ~3x these), a
T5-base-sized text encoder, the 32 kHz EnCodec, the chroma prefix of 235 frames. Batch 1, CFG
3.0, top-k 250, the null chroma (the same prefix length as a melody), one seed, through
``GenerationEngine.generate`` as ``musicgen-train generate`` runs it (the decode loop, the
condition a prefilled prefix), and through transformers' ``generate`` on the loaded fp32 model
(``generate``: what the engine ran before melody models joined the decode loop). One JSON line
per variant: setup (the conversion) and generation in CPU seconds (``time.process_time()``) and
wall seconds, and row-steps per CPU-second; then one line of ratios against ``generate`` from
the same run. Codec decoding is included in both. ``--batch N``: N rows in one engine call,
against N ``generate`` calls.
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
    parser.add_argument("--precisions", default="generate,fp32,int8,int4")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1, help="rows (generate: one call each)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    emit(kind="machine", flags=cpu_flags(), torch=torch.__version__, threads=args.threads)
    loaded = build_melody_model()
    params = GenerationParams(duration=args.seconds, seed=1, guidance_scale=GUIDANCE, top_k=TOP_K)
    steps = params.generate_kwargs(loaded.frame_rate, 4)["max_new_tokens"] * args.batch
    rates = {}
    for variant in args.precisions.split(","):
        cpu, wall = time.process_time(), time.perf_counter()
        engine = GenerationEngine(
            loaded, precision="fp32" if variant == "generate" else variant, threads=args.threads
        )
        setup = (time.process_time() - cpu, time.perf_counter() - wall)
        cpu, wall = time.process_time(), time.perf_counter()
        if variant == "generate":  # one row at a time, as the engine ran melody models before
            for _ in range(args.batch):
                transformers_generate(loaded, params)
        else:
            engine.generate([PROMPT] * args.batch, params)
        run = (time.process_time() - cpu, time.perf_counter() - wall)
        rates[variant] = steps / run[0]
        emit(
            kind="melody",
            variant=variant,
            seconds=args.seconds,
            batch=args.batch,
            row_steps=steps,
            setup_cpu_s=round(setup[0], 2),
            setup_wall_s=round(setup[1], 2),
            generate_cpu_s=round(run[0], 2),
            generate_wall_s=round(run[1], 2),
            steps_per_cpu_s=round(rates[variant], 2),
        )
        del engine
    for base in ("generate", "fp32"):
        if base in rates:
            others = {p: round(r / rates[base], 2) for p, r in rates.items() if p != base}
            emit(kind="ratios", vs=base, **others)


def transformers_generate(loaded: LoadedModel, params: GenerationParams):
    """transformers' own ``generate`` on the loaded fp32 model, as the engine's request."""
    inputs = loaded.processor(text=[PROMPT], padding=True, return_tensors="pt")
    kwargs = params.generate_kwargs(loaded.frame_rate, 4)
    torch.manual_seed(params.seed)
    with torch.inference_mode():
        return loaded.model.generate(**inputs, **kwargs)


if __name__ == "__main__":
    main()
