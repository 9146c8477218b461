"""What a lower precision costs: next-token KL divergence and token agreement against fp32.

Both decoders see the same tokens (teacher forcing: the fp32 run samples, the other is fed what
fp32 sampled), so every step compares two next-token distributions for the same context. Each
row of the other run samples with the same seed as fp32, so ``sampled_agreement`` is how often
the same random draw picks the same token; ``argmax_agreement`` is how often the most likely
token is the same. The other run is set up as ``GenerationEngine`` sets it up (int8 on a CPU
with native bf16 keeps its K/V cache in bf16).
"""

from __future__ import annotations

import torch

from musicgen_train.generation.decode import DecodeLoop, SamplingParams
from musicgen_train.generation.precision import cache_dtype, prepare_decoder


@torch.inference_mode()
def compare_precision(
    model,
    processor,
    precision: str,
    prompts: list[str],
    *,
    steps: int = 64,
    guidance_scale: float = 3.0,
    top_k: int = 250,
    seed: int = 0,
    activation_scales: str = "row",
) -> dict:
    """Run ``prompts`` for ``steps`` at fp32 and at ``precision`` in lockstep; the mean KL(fp32 ||
    other) of the guided next-token distributions (nats per codebook token) and agreements.
    ``activation_scales``: int8's (``prepare_decoder``), ``tensor`` for torch's own."""
    reference = DecodeLoop(model, processor, prepare_decoder(model.decoder, "fp32"))
    other = DecodeLoop(
        model,
        processor,
        prepare_decoder(model.decoder, precision, activation_scales=activation_scales),
        cache_dtype(precision, model.device),
    )
    params = SamplingParams(max_new_tokens=steps, guidance_scale=guidance_scale, top_k=top_k)
    pairs = [
        (reference.add_row(p, params, seed=seed + i), other.add_row(p, params, seed=seed + i))
        for i, p in enumerate(prompts)
    ]
    scores: dict[tuple[int, int], torch.Tensor] = {}
    reference.observer = lambda row, s: scores.__setitem__((0, row.id), s.clone())
    other.observer = lambda row, s: scores.__setitem__((1, row.id), s.clone())
    kl, argmax_same, sampled_same, count = 0.0, 0, 0, 0
    for _ in range(steps):
        reference.step()
        other.step()
        for ref_row, other_row in pairs:
            p = torch.log_softmax(scores[(0, ref_row.id)], dim=-1)
            q = torch.log_softmax(scores[(1, other_row.id)], dim=-1)
            kl += float((p.exp() * (p - q)).sum())
            argmax_same += int((p.argmax(-1) == q.argmax(-1)).sum())
            step = ref_row.step
            sampled_same += int((ref_row.tokens[:, step] == other_row.tokens[:, step]).sum())
            count += p.shape[0]
            other_row.tokens[:, step] = ref_row.tokens[:, step]  # teacher forcing
    return {
        "precision": precision,
        "activation_scales": activation_scales if precision == "int8" else None,
        "prompts": len(prompts),
        "steps": steps,
        "kl_nats": kl / count,
        "argmax_agreement": argmax_same / count,
        "sampled_agreement": sampled_same / count,
    }
