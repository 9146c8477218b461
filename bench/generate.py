"""Generation speed, side by side in one run: transformers vs the engine, musicgen-small's shape.

    python bench/generate.py            # batch 1, 4, 8; cache lengths 0, 750, 1500
    python bench/generate.py --quick    # batch 1 and 8; lengths 0 and 1500; fewer steps

Random weights of musicgen-small's shape (model/shapes.py; nothing is downloaded), CFG 3.0,
top-k 250. A step's cost grows with the cache length (transformers' DynamicCache concatenates
K/V at every step), so each variant's step is timed at several cache lengths and the cost is
integrated (trapezoid) over the 1503 steps of a 30 s clip:

- ``hf-fp32`` / ``hf-int8``: the forward call and logits processors ``generate`` runs per step
  (``MusicgenForConditionalGeneration.forward`` with an ``EncoderDecoderCache`` holding L cached
  steps, CFG, top-k, softmax, multinomial); int8 = ``quantize_dynamic`` of the decoder's Linears.
- ``engine-fp32`` / ``engine-bf16`` / ``engine-int8``: ``DecodeLoop.step`` with every row at
  position L (prepared with ``generation.precision``); ``engine-int8tensor``: int8 with torch's
  ``quantize_dynamic`` (one activation scale per batch: the engine's int8 before per-row scales);
  ``engine-int4``: 4-bit weights in groups of 32, bf16 activations (opt-in ``precision=int4``).

Per CPU-second: one torch thread, ``time.process_time()``. Wall clock: all the CPUs this process
may use (``threads``), ``time.perf_counter()``. One JSON object per line; ``ratio`` lines compare
variants measured in this run.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from musicgen_train.generation.decode import DecodeLoop, SamplingParams  # noqa: E402
from musicgen_train.generation.precision import cache_dtype, prepare_decoder  # noqa: E402
from musicgen_train.generation.threads import available_cpus  # noqa: E402

CLIP_STEPS = 1503  # 30 s at 50 frames/s + 3 delay steps
GUIDANCE, TOP_K = 3.0, 250
PROMPT = "an upbeat jazz tune with piano, double bass and brushed drums"


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def cpu_flags() -> str:
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0]
    except (OSError, IndexError):
        return ""
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni")
    return " ".join(f for f in wanted if f" {f}" in flags)


def build_model():
    """musicgen-small's shape with random weights (T5-base-sized text encoder), in memory."""
    from transformers import MusicgenConfig, MusicgenForConditionalGeneration

    from musicgen_train.model.shapes import (
        encodec_32khz_config,
        musicgen_small_decoder_config,
        t5_base_text_config,
    )
    from musicgen_train.model.tiny import build_tiny_processor

    text = t5_base_text_config()
    config = MusicgenConfig(
        text_encoder=text,
        audio_encoder=encodec_32khz_config(),
        decoder=musicgen_small_decoder_config(),
    )
    return random_weights(MusicgenForConditionalGeneration, config), build_tiny_processor()


def random_weights(model_class, config):
    """``model_class(config)`` with seeded random weights, in eval mode, its codec's codebooks
    spread (``init_codebooks``) and MusicGen's start and pad id (2048)."""
    from musicgen_train.model.tiny import init_codebooks

    config.decoder_start_token_id = config.pad_token_id = 2048
    torch.manual_seed(0)
    model = model_class(config).eval()
    init_codebooks(model.audio_encoder)
    model.generation_config.decoder_start_token_id = 2048
    model.generation_config.pad_token_id = 2048
    return model


# --- transformers -------------------------------------------------------------------------------


class HFStep:
    """What ``generate`` runs per step, with L steps already in a DynamicCache."""

    def __init__(self, model, processor, batch: int, length: int):
        device = model.device
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache
        from transformers.generation.logits_process import (
            ClassifierFreeGuidanceLogitsProcessor,
            LogitsProcessorList,
            TopKLogitsWarper,
        )
        from transformers.modeling_outputs import BaseModelOutput

        self.model = model
        cfg = model.config.decoder
        inputs = processor(text=[PROMPT] * batch, padding=True, return_tensors="pt").to(device)
        with torch.inference_mode():
            states = model.text_encoder(**inputs).last_hidden_state
        states = torch.cat([states, torch.zeros_like(states)])
        self.mask = torch.cat(
            [inputs["attention_mask"], torch.zeros_like(inputs["attention_mask"])]
        )
        self.encoder_outputs = BaseModelOutput(last_hidden_state=states)
        seqs, heads, dim = (
            2 * batch,
            cfg.num_attention_heads,
            cfg.hidden_size // cfg.num_attention_heads,
        )
        dtype = next(model.decoder.parameters()).dtype
        if dtype not in (torch.float32, torch.bfloat16, torch.float16):
            dtype = torch.float32
        self.cache = EncoderDecoderCache(DynamicCache(config=cfg), DynamicCache(config=cfg))
        for layer in range(cfg.num_hidden_layers):
            if length:
                kv = torch.randn(seqs, heads, length, dim, dtype=dtype, device=device)
                self.cache.self_attention_cache.update(kv, kv.clone(), layer)
            cross = torch.randn(seqs, heads, states.shape[1], dim, dtype=dtype, device=device)
            self.cache.cross_attention_cache.update(cross, cross.clone(), layer)
            self.cache.is_updated[layer] = True
        self.ids = torch.full((seqs * cfg.num_codebooks, 1), 5, dtype=torch.long, device=device)
        self.input_ids = self.ids[: batch * cfg.num_codebooks]
        self.processors = LogitsProcessorList(
            [ClassifierFreeGuidanceLogitsProcessor(GUIDANCE), TopKLogitsWarper(TOP_K)]
        )

    @torch.inference_mode()
    def __call__(self) -> None:
        out = self.model(
            encoder_outputs=self.encoder_outputs,
            attention_mask=self.mask,
            decoder_input_ids=self.ids,
            cache=self.cache,
            use_cache=True,
        )
        scores = out.logits[:, -1].to(copy=True, dtype=torch.float32)
        scores = self.processors(self.input_ids, scores)
        probs = torch.nn.functional.softmax(scores, dim=-1)
        torch.multinomial(probs, num_samples=1)


# --- the engine ---------------------------------------------------------------------------------


class EngineStep:
    def __init__(self, model, processor, decoder, batch: int, length: int, precision: str):
        loop_class = DecodeLoop
        if precision.endswith("graphs"):
            from musicgen_train.generation.cuda import GraphedDecodeLoop as loop_class
        precision = _base(precision.split("+")[0])
        self.loop = loop_class(model, processor, decoder, cache_dtype(precision, model.device))
        params = SamplingParams(max_new_tokens=CLIP_STEPS, guidance_scale=GUIDANCE, top_k=TOP_K)
        for i in range(batch):
            self.loop.add_row(PROMPT, params, seed=i)
        self.loop.step()  # lays the cache out (capacity: the whole clip)
        self.length = length

    def __call__(self) -> None:
        for row in self.loop.rows:
            row.step = self.length  # every timed step at the same cache length
        self.loop.step()


def _base(precision: str) -> str:
    return "int8" if precision.startswith("int8") else precision


def _prepare(decoder, precision: str, fuse: bool = True):
    scales = "tensor" if precision == "int8tensor" else "row"
    return prepare_decoder(decoder, _base(precision), fuse=fuse, activation_scales=scales)


# --- timing ---------------------------------------------------------------------------------------


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_steps(step, repeats: int) -> tuple[float, float]:
    """Seconds per step: (CPU, wall), after one warm-up step."""
    step()
    _sync()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(repeats):
        step()
    _sync()
    return (time.process_time() - cpu) / repeats, (time.perf_counter() - wall) / repeats


def integrate(lengths: list[int], costs: list[float]) -> float:
    """Mean step cost over a clip of CLIP_STEPS steps from costs at ``lengths`` (trapezoid)."""
    total = 0.0
    for i in range(len(lengths) - 1):
        total += (lengths[i + 1] - lengths[i]) * (costs[i] + costs[i + 1]) / 2
    return total / (lengths[-1] - lengths[0])


def batch_independence(model, processor, threads: int, steps: int = 24) -> None:
    """How often a row's token differs between running in a batch of 4 and running alone."""
    torch.set_num_threads(threads)
    prompts = [PROMPT, "lofi beat", "orchestral film score with strings", "techno"]
    params = SamplingParams(max_new_tokens=steps, guidance_scale=GUIDANCE, top_k=TOP_K)
    for precision in ("fp32", "int8", "int8tensor"):
        decoder = _prepare(model.decoder, precision)
        dtype = cache_dtype(_base(precision), model.device)

        def run(batch, decoder=decoder, dtype=dtype):
            loop = DecodeLoop(model, processor, decoder, dtype)
            rows = [loop.add_row(prompts[i], params, seed=100 + i) for i in batch]
            while loop.rows:
                loop.step()
            return [row.delayed_ids() for row in rows]

        together = run(range(len(prompts)))
        alone = [run([i])[0] for i in range(len(prompts))]
        differing = sum(int((a != b).sum()) for a, b in zip(together, alone, strict=True))
        first = [
            int((a != b).any(0).nonzero()[0]) if (a != b).any() else None
            for a, b in zip(together, alone, strict=True)
        ]
        emit(
            kind="batch_independence",
            precision=precision,
            batch=len(prompts),
            steps=steps,
            tokens=sum(a.numel() for a in alone),
            differing=differing,
            first_differing_step=first,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--variants", default="hf-fp32,hf-int8,engine-fp32,engine-bf16,engine-int8")
    parser.add_argument("--batches", default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--quality", action="store_true", help="int8 / int4 KL, agreement too")
    parser.add_argument(
        "--independence",
        action="store_true",
        help="only: tokens of rows batched together vs each alone (fp32 and int8)",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="cuda: wall clock only; variants e.g. hf-fp32,hf-bf16,engine-bf16,engine-bf16+graphs",
    )
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    batches = [int(b) for b in (args.batches or ("1,8" if args.quick else "1,4,8")).split(",")]
    lengths = [0, CLIP_STEPS - 3] if args.quick else [0, 750, CLIP_STEPS - 3]
    repeats = args.repeats or (2 if args.quick else 3)
    threads = available_cpus()
    emit(
        kind="machine",
        cpu=platform.processor() or platform.machine(),
        flags=cpu_flags(),
        threads=threads,
        torch=torch.__version__,
    )
    model, processor = build_model()
    model.to(args.device)
    if args.independence:
        batch_independence(model, processor, threads)
        return
    gpu = args.device.startswith("cuda")
    decoders = {}
    for name in args.variants.split(","):
        family, precision = name.split("-")
        # transformers' forward needs the unfused modules
        fuse = family == "engine"
        decoders[name] = _prepare(model.decoder, precision.split("+")[0], fuse=fuse)
    fp32_decoder = model.decoder
    results: dict[tuple[str, int], dict] = {}
    for batch in batches:
        for name, target in decoders.items():
            cpu_costs, wall_costs = [], []
            for length in lengths:
                if name.startswith("hf"):
                    model.decoder = target  # transformers' model runs with this decoder
                    step = HFStep(model, processor, batch, length)
                else:
                    step = EngineStep(model, processor, target, batch, length, name.split("-")[1])
                torch.set_num_threads(1)
                cpu, wall_1 = time_steps(step, repeats)
                wall = float("nan")
                if gpu:
                    cpu, wall = float("nan"), wall_1
                elif batch == 1:  # all threads: slow to measure on a busy host, batch 1 only
                    torch.set_num_threads(threads)
                    _, wall = time_steps(step, 1)
                cpu_costs.append(cpu)
                wall_costs.append(wall)
                emit(
                    kind="step",
                    variant=name,
                    batch=batch,
                    cache_length=length,
                    cpu_ms=round(cpu * 1e3, 1),
                    wall_1thread_ms=round(wall_1 * 1e3, 1),
                    wall_ms=round(wall * 1e3, 1),
                    threads=threads,
                )
                model.decoder = fp32_decoder
                del step
                gc.collect()
            mean_cpu = integrate(lengths, cpu_costs)
            mean_wall = integrate(lengths, wall_costs)
            row = {
                "kind": "clip",
                "variant": name,
                "batch": batch,
                "cpu_ms_per_step": round(mean_cpu * 1e3, 1),
                "wall_ms_per_step": round(mean_wall * 1e3, 1),
                "steps_per_cpu_second": round(batch / mean_cpu, 3),
                "steps_per_wall_second": round(batch / mean_wall, 3),
                "clip_30s_decode_wall_s": round(mean_wall * CLIP_STEPS, 1),
            }
            results[(name, batch)] = row
            emit(**row)
    torch.set_num_threads(threads)
    # The rest of a 30 s clip at precision=auto: prefill and the codec (fp32 always).
    with torch.inference_mode():
        loop = DecodeLoop(model, processor, decoders.get("engine-int8", model.decoder))
        start = time.perf_counter()
        loop.add_row(PROMPT, SamplingParams(max_new_tokens=CLIP_STEPS, guidance_scale=GUIDANCE))
        prefill = time.perf_counter() - start
        codes = torch.randint(0, 2048, (1, 1, 4, CLIP_STEPS - 3), device=model.device)
        start = time.perf_counter()
        model.audio_encoder.decode(codes, audio_scales=[None])
        codec = time.perf_counter() - start
    emit(
        kind="fixed_costs",
        prefill_s=round(prefill, 2),
        codec_30s_s=round(codec, 2),
        threads=threads,
    )
    for name, what in (("engine-int8", "precision=auto (int8)"), ("engine-int4", "int4")):
        if (name, 1) in results:
            total = results[(name, 1)]["clip_30s_decode_wall_s"] + prefill + codec
            emit(
                kind="kpi",
                what=f"30 s clip, {what}, batch 1, wall",
                seconds=round(total, 1),
                target_seconds=60,
                threads=threads,
            )
    for batch in batches:
        for a, b in [
            ("engine-int8", "hf-int8"),
            ("engine-int8", "engine-int8tensor"),
            ("engine-int8", "hf-fp32"),
            ("engine-int4", "engine-int8"),
            ("engine-int4", "hf-int8"),
            ("engine-int4", "hf-fp32"),
            ("engine-fp32", "hf-fp32"),
            ("engine-bf16", "hf-fp32"),
        ]:
            if (a, batch) in results and (b, batch) in results:
                emit(
                    kind="ratio",
                    batch=batch,
                    numerator=a,
                    denominator=b,
                    per="cpu_second",
                    ratio=round(
                        results[(a, batch)]["steps_per_cpu_second"]
                        / results[(b, batch)]["steps_per_cpu_second"],
                        2,
                    ),
                )
    for name in decoders:
        if (name, 1) in results and (name, max(batches)) in results and max(batches) > 1:
            emit(
                kind="ratio",
                variant=name,
                numerator=f"batch {max(batches)} aggregate",
                denominator="batch 1",
                per="cpu_second",
                ratio=round(
                    results[(name, max(batches))]["steps_per_cpu_second"]
                    / results[(name, 1)]["steps_per_cpu_second"],
                    2,
                ),
            )
    if args.quality:
        from musicgen_train.generation.quality import compare_precision

        torch.set_num_threads(threads)
        prompts = [PROMPT, "lofi beat", "orchestral film score with strings", "techno"]
        for precision in ("int8", "int8tensor", "int4", "bf16"):
            scales = "tensor" if precision == "int8tensor" else "row"
            emit(
                kind="quality",
                model="musicgen-small shape (random weights)",
                **compare_precision(
                    model, processor, _base(precision), prompts, steps=16, activation_scales=scales
                ),
            )


if __name__ == "__main__":
    main()
