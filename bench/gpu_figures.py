"""GPU figures for bench/gpu_check.sh: one JSON object per line, wall clock (CUDA synchronised).

    python bench/gpu_figures.py train-step   # fp32 vs bf16-mixed training step, full and LoRA
    python bench/gpu_figures.py clip         # 30 s of audio end to end: engine vs generate
    python bench/gpu_figures.py checkpoint DIR  # a trained checkpoint back through sources/

Models are random weights of musicgen-small's shape (bench/train_step.py builds and saves the
folder once, so it loads through the same code as a real checkpoint); ``--model tiny`` runs the
same code on the tiny model (how the script is tested on a CPU: ``--device cpu``).
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

from train_step import model_source  # noqa: E402

PROMPT = "an upbeat jazz tune with piano, double bass and brushed drums"


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, fn) -> tuple[object, float]:
    sync(device)
    started = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - started


def peak_mb(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


# --- training ---------------------------------------------------------------------------------


def train_step_figures(args) -> None:
    """Forward + backward + AdamW of the project's LightningModule, as Lightning's precision
    plugins run it (bf16-mixed = autocast to bf16 over fp32 weights)."""
    for finetune in ("full", "lora"):
        for precision in ("32", "bf16-mixed"):
            train_case(args, finetune, precision)


def train_case(args, finetune: str, precision: str) -> None:
    from musicgen_train.config import load_config
    from musicgen_train.training.module import MusicgenLightningModule

    torch.manual_seed(0)
    cfg = load_config([f"model={model_source(args.model)}", f"finetune={finetune}", "logger=csv"])
    module = MusicgenLightningModule(cfg).to(args.device).train()
    config = module.model.config
    frames = int(args.crop_seconds * config.audio_encoder.frame_rate)
    codebooks = config.decoder.num_codebooks
    shape = (args.batch, codebooks, frames)
    batch = {
        "texts": ["smooth jazz piano trio, 120 bpm", "lo-fi hip hop beat"] * (args.batch // 2),
        "codes": torch.randint(0, config.decoder.vocab_size, shape, device=args.device),
        "padding_mask": torch.ones(args.batch, frames, dtype=torch.bool, device=args.device),
    }
    trainable = [p for _, p in module.trainable_parameters()]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(0)
    autocast = "cuda" if args.device.startswith("cuda") else "cpu"
    reset_peak(args.device)

    def step():
        with torch.autocast(autocast, torch.bfloat16, enabled=precision == "bf16-mixed"):
            drop = module.conditioning_dropout(args.batch, generator)
            loss = module(batch, drop)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    for _ in range(args.warmup):
        step()
    losses, seconds = timed(args.device, lambda: [step() for _ in range(args.steps)])
    emit(
        figure="train_step",
        model=args.model,
        finetune=finetune,
        precision=precision,
        batch=args.batch,
        crop_seconds=args.crop_seconds,
        seconds_per_step=round(seconds / args.steps, 4),
        tokens_per_s=round(args.batch * codebooks * frames * args.steps / seconds, 1),
        peak_mb=peak_mb(args.device),
        loss=round(float(torch.stack(losses).float().mean()), 4),
    )


# --- one clip end to end --------------------------------------------------------------------------


def clip_figures(args) -> None:
    """``duration`` s at batch 1 (and 8), text to waveform: the engine at each precision against
    transformers' ``generate`` (fp32, bf16), everything included but the model load."""
    from musicgen_train.generation import GenerationEngine, GenerationParams
    from musicgen_train.sources import load_musicgen

    loaded = load_musicgen(model_source(args.model), device=args.device)
    params = GenerationParams(duration=args.duration, seed=1)
    variants = args.variants.split(",")
    for batch in [int(b) for b in args.batches.split(",")]:
        prompts = [PROMPT] * batch
        for variant in variants:
            family, precision = variant.split("-", 1)
            precision, graphs = precision.split("+")[0], precision.endswith("+graphs")
            engine = GenerationEngine(loaded, precision=precision, cuda_graphs=graphs)
            if family == "hf":
                model = loaded.model.to(torch.bfloat16 if precision == "bf16" else torch.float32)
                inputs = loaded.processor(text=prompts, return_tensors="pt").to(args.device)

                def run(model=model, inputs=inputs, engine=engine):
                    torch.manual_seed(1)
                    codes = model.generate(**inputs, **engine._generate_kwargs(params))
                    return codes

            else:

                def run(engine=engine, prompts=prompts):
                    return engine.generate(prompts, params)

            reset_peak(args.device)
            try:
                if args.warmup:  # a 1 s clip first: kernels loaded, graphs captured once
                    short = GenerationParams(duration=1.0, seed=1)
                    if family == "hf":
                        with torch.inference_mode():
                            model.generate(**inputs, **engine._generate_kwargs(short))
                    else:
                        engine.generate(prompts, short)
                with torch.inference_mode():
                    audio, seconds = timed(args.device, run)
            except Exception as err:  # one variant failing must not hide the others' figures
                emit(
                    figure="clip",
                    variant=variant,
                    batch=batch,
                    error=f"{type(err).__name__}: {err}",
                )
                continue
            finally:
                loaded.model.to(torch.float32)
            emit(
                figure="clip",
                model=args.model,
                variant=variant,
                batch=batch,
                duration=args.duration,
                seconds=round(seconds, 3),
                realtime_factor=round(args.duration * batch / seconds, 2),
                shape=list(audio.shape),
                peak_mb=peak_mb(args.device),
            )


# --- a trained checkpoint, back through sources/ -------------------------------------------------


def checkpoint_figures(args) -> None:
    """The newest ``last.ckpt`` (a file or DeepSpeed's folder) under ``args.folder`` loads
    through ``sources.load_musicgen`` and generates one second on the device."""
    from musicgen_train.generation import GenerationEngine, GenerationParams
    from musicgen_train.sources import load_musicgen

    found = sorted(Path(args.folder).rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        emit(figure="checkpoint", folder=args.folder, ok=False, error="no last.ckpt")
        raise SystemExit(1)
    ckpt = found[-1]
    loaded = load_musicgen(str(ckpt), device=args.device)
    audio = GenerationEngine(loaded, precision="auto").generate(
        ["a jazz tune"], GenerationParams(duration=1.0, seed=0)
    )
    emit(
        figure="checkpoint",
        checkpoint=str(ckpt),
        deepspeed_folder=ckpt.is_dir(),
        shape=list(audio.shape),
        finite=bool(torch.isfinite(torch.from_numpy(audio)).all()),
        ok=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("figure", choices=("train-step", "clip", "checkpoint"))
    parser.add_argument("folder", nargs="?", help="checkpoint: where to look for last.ckpt")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="small", choices=("tiny", "small"))
    parser.add_argument("--batch", type=int, default=8, help="train-step: batch size")
    parser.add_argument("--crop-seconds", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--duration", type=float, default=30.0, help="clip: seconds of audio")
    parser.add_argument("--batches", default="1,8", help="clip: batch sizes")
    parser.add_argument(
        "--variants", default="hf-fp32,hf-bf16,engine-fp32,engine-bf16,engine-bf16+graphs"
    )
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        emit(figure=args.figure, ok=False, error="no CUDA GPU visible to torch")
        raise SystemExit(1)
    {"train-step": train_step_figures, "clip": clip_figures, "checkpoint": checkpoint_figures}[
        args.figure
    ](args)


if __name__ == "__main__":
    main()
