"""int4 Linear layers: 4-bit weights in groups along the input, bf16 activations (CPU).

A decode step at batch 1 reads every weight of the decoder once and does little arithmetic
with it, so on a CPU its time is mostly the bytes the weights take: int8 weights are read at
the memory's speed (~7 GB/s a core here), and halving those bytes is the one big step left.
torch ships a CPU kernel for exactly this layout (``_weight_int4pack_mm_for_cpu``, the one
``torchao``'s int4 weight-only mode calls): weights of 4 bits with, per group of ``group_size``
inputs of each output channel, a bf16 scale and offset; activations bf16, sums in fp32.

- Quantisation is round-to-nearest over each group's ``[min, max]`` (asymmetric): ``w ~ (q - 8)
  * scale + zero`` with ``q`` in 0..15, ``zero = min + 8 * scale``. No calibration data (GPTQ /
  AWQ would need some): the error is what rounding gives, measured in docs/generation.md.
- Activations are not quantised, so a row's result never depends on its batch companions (the
  kernel computes each row alone: tested bit for bit).
- A Linear whose input width no group size divides, or whose output width is not a multiple of
  16 (the kernel's tile), stays a bf16 Linear.
"""

from __future__ import annotations

import torch
from torch import nn

GROUP_SIZES = (32, 64, 128, 256)  # what the kernel accepts; the smallest that fits is used
OUTPUT_TILE = 16  # the kernel packs output channels 16 at a time


def int4_supported() -> bool:
    """Whether this torch has the CPU int4 kernel (torch 2.6 and later)."""
    ops = torch.ops.aten
    return hasattr(ops, "_weight_int4pack_mm_for_cpu") and hasattr(
        ops, "_convert_weight_to_int4pack_for_cpu"
    )


def quantize_int4(weight: torch.Tensor, group_size: int):
    """``weight`` ``[N, K]`` -> (``q`` int32 ``[N, K]`` in 0..15, ``scale_and_zero`` fp32
    ``[K / group_size, N, 2]``), the layout the kernel reads."""
    n, k = weight.shape
    groups = weight.float().reshape(n, k // group_size, group_size)
    low, high = groups.amin(dim=-1), groups.amax(dim=-1)
    scale = ((high - low) / 15).clamp_min(1e-12)
    q = ((groups - low[..., None]) / scale[..., None]).round().clamp(0, 15).to(torch.int32)
    zero = low + 8 * scale
    return q.reshape(n, k), torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous()


def dequantize_int4(q: torch.Tensor, scale_and_zero: torch.Tensor, group_size: int):
    """The weights the kernel multiplies by (fp32), for checks: ``(q - 8) * scale + zero``."""
    n, k = q.shape
    per_group = scale_and_zero.transpose(0, 1)  # [N, groups, 2]
    groups = q.reshape(n, k // group_size, group_size).float() - 8
    return (groups * per_group[..., :1] + per_group[..., 1:]).reshape(n, k)


class Int4Linear(nn.Module):
    """``nn.Linear`` with int4 weights (``group_size`` inputs per scale) and bf16 activations."""

    def __init__(self, linear: nn.Linear, group_size: int):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.group_size = group_size
        q, scale_and_zero = quantize_int4(linear.weight.detach(), group_size)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        self.register_buffer("packed", packed, persistent=False)
        self.register_buffer("scale_and_zero", scale_and_zero.bfloat16(), persistent=False)
        bias = None if linear.bias is None else linear.bias.detach().bfloat16().clone()
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16)
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(
            rows, self.packed, self.group_size, self.scale_and_zero
        )
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, group_size={self.group_size}"
        )


def group_size_for(linear: nn.Linear) -> int | None:
    """The smallest group size that divides the input width (None: the kernel can't take it)."""
    if linear.out_features % OUTPUT_TILE:
        return None
    return next((g for g in GROUP_SIZES if linear.in_features % g == 0), None)


def quantize_linears_int4(module: nn.Module) -> nn.Module:
    """In place: every ``nn.Linear`` of ``module`` the kernel can take becomes ``Int4Linear``
    (from its fp32 weights); call before casting the rest to bf16."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            group_size = group_size_for(child) if type(child) is nn.Linear else None
            if group_size:
                setattr(parent, name, Int4Linear(child, group_size))
    return module
