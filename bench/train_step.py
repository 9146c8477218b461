"""Training-step throughput and memory on CPU: one JSON object per line.

    python bench/train_step.py                       # tiny + musicgen-small shape, all 8 modes
    python bench/train_step.py --models tiny --steps 5

For each model and fine-tuning mode, one process builds ``MusicgenLightningModule`` from the
config (as ``train`` does) and times four cases in turn: fp32 vs bf16-mixed (autocast on CPU,
what Lightning's ``bf16-mixed`` does) x codes read from the token cache vs codes computed from
audio by the model's EnCodec in every step (fp32, no grad). A step is forward + backward +
AdamW on a batch of ``--batch`` crops of ``--crop-seconds`` seconds. Defaults keep the sweep
near 10 minutes on 2 CPU cores: tiny 5 s crops, 1 warm-up + 3 timed steps; small 2 s crops,
1 timed step (no warm-up: the first step's one-off costs are small next to a full step).

Models (random weights, built and saved once under ``$MUSICGEN_TRAIN_CACHE/bench``):
- ``tiny``: the project's tiny MusicGen (its own tiny codec);
- ``small``: musicgen-small's shape: decoder 1024 wide, 24 layers, 16 heads, FFN 4096,
  4 codebooks of 2048; a T5-base-shaped encoder (768 wide, 12 layers; ByT5's 384-token vocabulary
  instead of T5's 32k, so the embedding is smaller); EnCodec at the real 32 kHz shape.

``tokens_per_s`` counts codes (batch x codebooks x frames) per second of wall time;
``tokens_per_cpu_s`` per second of the process's CPU time, steadier on a shared machine.
``step_peak_mb`` is the peak resident memory during the steps above the resident memory
before them (the kernel's high-water mark, reset through /proc/self/clear_refs): gradients,
AdamW state and activations. ``peak_rss_mb`` is the process's peak during the steps.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def small_shape_folder() -> Path:
    """musicgen-small's shape with random weights, saved like a hub checkpoint (once)."""
    from transformers import MusicgenConfig, MusicgenForConditionalGeneration

    from musicgen_train.model.shapes import (
        encodec_32khz_config,
        musicgen_small_decoder_config,
        t5_base_text_config,
    )
    from musicgen_train.model.tiny import build_tiny_processor, cache_root, init_codebooks

    folder = cache_root() / "bench" / "musicgen-small-shape-v1"
    if (folder / "config.json").exists():
        return folder
    text = t5_base_text_config()
    codec = encodec_32khz_config()
    decoder = musicgen_small_decoder_config()
    config = MusicgenConfig(text_encoder=text, audio_encoder=codec, decoder=decoder)
    config.decoder_start_token_id = config.pad_token_id = 2048
    model = MusicgenForConditionalGeneration(config)
    init_codebooks(model.audio_encoder)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    build_tiny_processor().save_pretrained(tmp)
    tmp.rename(folder)
    return folder


def model_source(name: str) -> str:
    if name == "tiny":
        from musicgen_train.model.tiny import ensure_tiny_model

        return str(ensure_tiny_model(seed=0))
    return str(small_shape_folder())


# --- the cases of one model and mode, in their own process ----------------------------------------


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _release_memory() -> None:
    """Give freed memory back to the kernel so the next case starts from what is in use."""
    import ctypes
    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def train_step(module, optimizer, batch: dict, precision: str, generator) -> float:
    """One optimizer step as Lightning runs it: forward (under autocast for bf16-mixed),
    backward, AdamW, zero the gradients."""
    import torch

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
        drop = module.conditioning_dropout(len(batch["texts"]), generator)
        loss = module(batch, drop)["loss"]
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


class Batches:
    """Batches of one model's shape: codes from the 'cache' (ready) or encoded from 'audio'."""

    def __init__(self, module, source: str, batch: int, crop_seconds: float):
        import torch

        from musicgen_train.sources import load_codec

        config = module.model.config
        self.codebooks = config.decoder.num_codebooks
        self.frames = int(crop_seconds * config.audio_encoder.frame_rate)
        rate = config.audio_encoder.sampling_rate
        captions = ["smooth jazz piano trio, 120 bpm, C major", "lo-fi hip hop beat, warm bass"]
        self.texts = (captions * batch)[:batch]
        self.cached = torch.randint(
            0, config.decoder.vocab_size, (batch, self.codebooks, self.frames)
        )
        t = torch.arange(int(crop_seconds * rate)) / rate
        self.audio = 0.3 * torch.sin(2 * torch.pi * 220 * t) + 0.05 * torch.randn(
            batch, 1, t.numel()
        )
        self.codec = load_codec(source)
        self.padding_mask = torch.ones(batch, self.frames, dtype=torch.bool)

    def __call__(self, codes_from: str) -> dict:
        import torch

        codes = self.cached
        if codes_from == "audio":
            with torch.no_grad():  # what prepare does once, done in every step instead
                bandwidth = self.codec.config.target_bandwidths[-1]
                codes = self.codec.encode(self.audio, bandwidth=bandwidth).audio_codes[0]
        assert codes.shape == self.cached.shape, (codes.shape, self.cached.shape)
        return {"texts": self.texts, "codes": codes, "padding_mask": self.padding_mask}


def run_group(model_name: str, finetune: str, args) -> list[dict]:
    """The four cases (precision x codes) of one model and fine-tuning mode, in this process.

    The module is built once; each case gets a fresh AdamW (its state counts in the case's
    peak) and the kernel's peak-memory mark is reset before it.
    """
    import torch

    from musicgen_train.config import load_config
    from musicgen_train.training.module import MusicgenLightningModule

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    source = model_source(model_name)
    cfg = load_config([f"model={source}", f"finetune={finetune}", "logger=csv"])
    module = MusicgenLightningModule(cfg)
    module.train()
    with torch.no_grad():  # page in the memory-mapped weights before anything is measured
        for parameter in module.parameters():
            parameter.sum()
    batches = Batches(module, source, args.batch, args.crop_seconds)
    trainable = [p for _, p in module.trainable_parameters()]
    generator = torch.Generator().manual_seed(0)
    results = []
    for precision, codes_from in itertools.product(("32", "bf16-mixed"), ("cache", "audio")):
        optimizer = torch.optim.AdamW(trainable, lr=1e-5, betas=(0.9, 0.95), weight_decay=0.1)
        _release_memory()
        rss_before = _rss_mb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # the peak restarts from what is resident
        for _ in range(args.warmup):
            train_step(module, optimizer, batches(codes_from), precision, generator)
        started, cpu_started = time.perf_counter(), time.process_time()
        losses = [
            train_step(module, optimizer, batches(codes_from), precision, generator)
            for _ in range(args.steps)
        ]
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_started
        peak = _rss_mb("VmHWM")
        tokens = args.batch * batches.codebooks * batches.frames * args.steps
        results.append(
            {
                "bench": "train_step",
                "model": model_name,
                "finetune": finetune,
                "precision": precision,
                "codes": codes_from,
                "batch": args.batch,
                "crop_seconds": args.crop_seconds,
                "frames": batches.frames,
                "codebooks": batches.codebooks,
                "steps": args.steps,
                "warmup": args.warmup,
                "params_total": sum(p.numel() for p in module.model.parameters()),
                "params_trainable": sum(p.numel() for p in trainable),
                "seconds_per_step": round(seconds / args.steps, 3),
                "tokens_per_s": round(tokens / seconds, 1),
                "cpu_seconds_per_step": round(cpu_seconds / args.steps, 3),
                "tokens_per_cpu_s": round(tokens / cpu_seconds, 1),
                "rss_before_mb": round(rss_before),
                "peak_rss_mb": round(peak),
                "step_peak_mb": round(peak - rss_before),
                "loss": round(sum(losses) / len(losses), 4),
                "torch_threads": torch.get_num_threads(),
            }
        )
        print(json.dumps(results[-1]), flush=True)
        del optimizer
    return results


# --- the sweep --------------------------------------------------------------------------------


def ratios(results: list[dict]) -> list[dict]:
    """Side-by-side ratios within each model: LoRA/full, bf16/fp32, audio/cache."""
    index = {(r["model"], r["finetune"], r["precision"], r["codes"]): r for r in results}
    out = []
    comparisons = {
        "lora_over_full": (1, "full", "lora"),
        "bf16_over_fp32": (2, "32", "bf16-mixed"),
        "audio_over_cache": (3, "cache", "audio"),
    }
    for name, (position, base, other) in comparisons.items():
        for key, base_result in index.items():
            if key[position] != base:
                continue
            other_key = tuple(other if i == position else v for i, v in enumerate(key))
            if other_key not in index:
                continue
            other_result = index[other_key]
            out.append(
                {
                    "bench": "train_step_ratio",
                    "ratio": name,
                    "model": key[0],
                    "case": "/".join(v for i, v in enumerate(key[1:], 1) if i != position),
                    **{
                        key: round(other_result[key] / max(base_result[key], 1e-9), 3)
                        for key in ("tokens_per_s", "tokens_per_cpu_s", "step_peak_mb")
                    },
                }
            )
    return out


# Per-model defaults that keep the whole sweep under 10 minutes on 2 shared CPU cores.
DEFAULTS = {
    "tiny": {"crop_seconds": 5.0, "steps": 3, "warmup": 1},
    "small": {"crop_seconds": 2.0, "steps": 1, "warmup": 0},
}


def sweep(args) -> None:
    for model in args.models:
        model_source(model)  # build once, outside the timed processes
    results = []
    started = time.perf_counter()
    for model, finetune in itertools.product(args.models, ("full", "lora")):
        given = {"crop_seconds": args.crop_seconds, "steps": args.steps, "warmup": args.warmup}
        settings = {**DEFAULTS[model], **{k: v for k, v in given.items() if v is not None}}
        command = [
            sys.executable,
            __file__,
            "--group",
            model,
            finetune,
            "--batch",
            str(args.batch),
            "--threads",
            str(args.threads),
        ]
        for key, value in settings.items():
            command += [f"--{key.replace('_', '-')}", str(value)]
        done = subprocess.run(command, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith('{"bench"')]
        for line in lines:
            results.append(json.loads(line))
            print(line, flush=True)
        if done.returncode != 0:
            error = (done.stderr.strip().splitlines() or ["no output"])[-1]
            print(
                json.dumps(
                    {"bench": "train_step", "model": model, "finetune": finetune, "error": error}
                ),
                flush=True,
            )
    for line in ratios(results):
        print(json.dumps(line), flush=True)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        json.dumps(
            {
                "bench": "train_step_total",
                "seconds": round(time.perf_counter() - started, 1),
                "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
                "cpu_count": os.cpu_count(),
                "load_average": os.getloadavg(),
            }
        ),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "small"], choices=list(DEFAULTS))
    parser.add_argument("--steps", type=int, help="timed steps per case (tiny 3, small 1)")
    parser.add_argument("--warmup", type=int, help="untimed steps before them (tiny 1, small 0)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads; 1 on a shared machine, where every multi-threaded op waits for "
        "the other threads' time slices",
    )
    parser.add_argument("--crop-seconds", type=float, help="seconds of audio per sample (5, 2)")
    parser.add_argument(
        "--group",
        nargs=2,
        metavar=("MODEL", "FINETUNE"),
        help="run the four cases of one model and mode in this process",
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if args.group:
        run_group(*args.group, args)
    else:
        sweep(args)


if __name__ == "__main__":
    main()
