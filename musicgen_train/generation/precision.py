"""``generation.precision``: the number format the decoder runs in (the codec always stays fp32).

- ``fp32``: the loaded weights as they are (bit-exact with transformers' ``generate``).
- ``bf16`` / ``fp16``: a copy of the decoder cast to that dtype.
- ``int8``: a copy of the decoder whose Linear layers hold int8 weights (one scale per output
  channel) and quantise their activations on the fly, one scale per row (``int8.py``: a row's
  tokens never depend on its batch companions; fbgemm's kernel, int32 accumulation); CPU only.
- ``int4``: a bf16 copy of the decoder whose Linear layers hold 4-bit weights in groups of 32
  inputs (``int4.py``, torch's CPU int4 kernel): half int8's weight bytes, so faster where a
  step is bound by memory (batch 1 on a CPU), at a larger quality cost; CPU only, opt-in. Best
  on CPUs with native bf16 (AVX-512 BF16 or AMX).
- ``auto``: int8 on CPU, bf16 on CUDA where the GPU supports it, else fp16.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from musicgen_train.errors import ConfigError
from musicgen_train.generation.int4 import int4_supported, quantize_linears_int4
from musicgen_train.generation.int8 import quantize_linears

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8", "int4")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``auto`` -> a concrete precision for ``device``; checks the value and the combination."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ConfigError(
            f"generation.precision={precision!r} is not allowed: choose one of {list(PRECISIONS)}"
        )
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "int8" if device.type == "cpu" else "fp32"
    if precision in ("int8", "int4") and device.type != "cpu":
        raise ConfigError(
            f"generation.precision={precision} runs on CPU only (its kernels are torch's CPU "
            "ones); use bf16 or fp16 on a GPU"
        )
    if precision == "int4" and not int4_supported():
        raise ConfigError(
            f"generation.precision=int4 needs torch's CPU int4 kernel (torch >= 2.6; this is "
            f"{torch.__version__}): upgrade torch or use int8"
        )
    return precision


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX): then a bf16 K/V cache
    halves the memory attention reads at no speed cost."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = line.split()
                    return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        pass
    return False


def cache_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The K/V cache's dtype for ``precision``: int8 on a CPU with native bf16 keeps it in bf16
    (int8 is approximate already; the cache is most of what a late step reads), else None (the
    decoder's own dtype; fp32 stays bit-exact)."""
    if precision == "int8" and torch.device(device).type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return None


def prepare_decoder(
    decoder: nn.Module, precision: str, *, fuse: bool = True, activation_scales: str = "row"
) -> nn.Module:
    """The decoder (``MusicgenForCausalLM``) to run at ``precision``: the module itself when it
    already is in that format, else a converted copy (the loaded model is never changed, since
    training or another engine may share it).

    A copy is ours, so with ``fuse`` its self-attention Q/K/V projections become one Linear
    (``qkv_proj``) and its LM heads one (``fused_heads``): fewer, larger matmuls per step (and
    one activation quantisation instead of three at int8). The fused copy then serves
    ``DecodeLoop`` only, not transformers' ``forward``.

    ``activation_scales`` (int8 only): ``row`` (default, ``int8.RowInt8Linear``) or ``tensor``
    (torch's ``quantize_dynamic``: one scale per batch, kept for comparison)."""
    if precision in ("int8", "int4"):
        copied = _plain_copy(decoder).float()
        if fuse:
            fuse_projections(copied)
        if precision == "int4":  # 4-bit Linears from the fp32 weights, the rest in bf16
            return quantize_linears_int4(copied).to(torch.bfloat16).eval()
        quantize_linears(copied, activation_scales)
        return copied.eval()
    dtype = DTYPES[precision]
    if next(decoder.parameters()).dtype == dtype:
        return decoder
    copied = _plain_copy(decoder).to(dtype).eval()
    if fuse:
        fuse_projections(copied)
    return copied


def _plain_copy(decoder: nn.Module) -> nn.Module:
    """A copy of the decoder; LoRA adapters (a peft model) merged into the copy's weights."""
    copied = copy.deepcopy(decoder)
    if hasattr(copied, "merge_and_unload"):
        copied = copied.merge_and_unload()
    return copied


@torch.no_grad()
def fuse_projections(causal_lm: nn.Module) -> None:
    """In place: ``qkv_proj`` for each self-attention and ``fused_heads`` for the LM heads, built
    from the same weights (concatenated); the separate modules are removed."""
    for layer in causal_lm.model.decoder.layers:
        attn = layer.self_attn
        parts = [attn.q_proj, attn.k_proj, attn.v_proj]
        weight = torch.cat([p.weight for p in parts])
        fused = nn.Linear(weight.shape[1], weight.shape[0], bias=parts[0].bias is not None)
        fused = fused.to(device=weight.device, dtype=weight.dtype)
        fused.weight.copy_(weight)
        if parts[0].bias is not None:
            fused.bias.copy_(torch.cat([p.bias for p in parts]))
        attn.qkv_proj = fused
        del attn.q_proj, attn.k_proj, attn.v_proj
    heads = causal_lm.lm_heads
    weight = torch.cat([head.weight for head in heads])
    fused = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    fused = fused.to(device=weight.device, dtype=weight.dtype)
    fused.weight.copy_(weight)
    causal_lm.fused_heads = fused
    causal_lm.num_heads_fused = len(heads)
    del causal_lm.lm_heads
