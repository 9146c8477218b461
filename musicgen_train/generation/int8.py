"""int8 Linear layers whose activations are quantised row by row (one scale per token).

torch's dynamic quantisation (``quantize_dynamic``) quantises a Linear's whole input with one
scale, so a row's rounding depends on the other rows of the batch: at int8, a request's tokens
changed with its batch companions (40 of 400 tokens on musicgen-small's shape). torchao's
``Int8DynamicActivationInt8WeightConfig`` has per-row scales but measured 2.5-7x slower per
Linear than fbgemm's kernel on this CPU (``torch._int_mm`` 1.5-2.5x slower), so this module keeps
fbgemm's ``quantized::linear_dynamic`` and makes its one scale the same for every row:

- each row ``x_m`` is divided by its own absolute maximum ``s_m`` (now within ``[-1, 1]``);
- one constant anchor row ``[1, -1, 0, ...]`` is appended, so the tensor's range -- which the
  kernel turns into its scale and zero point -- is exactly ``[-1, 1]`` whatever the batch holds;
- the kernel's fp32 output of row ``m`` is multiplied back by ``s_m`` and the bias added.

A row's quantisation and its int32 sums (exact) thus depend on that row only: a seeded request
gives the same tokens in any batch. Weights are int8, symmetric, one scale per output channel.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

ACTIVATION_SCALES = ("row", "tensor")


class RowInt8Linear(nn.Module):
    """``nn.Linear`` with int8 weights (per output channel) and int8 activations (per row)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        scale = weight.abs().amax(dim=1).clamp_min(1e-12) / 127
        zero = torch.zeros(self.out_features, dtype=torch.long)
        with warnings.catch_warnings():  # torch announces torchao as the successor
            warnings.simplefilter("ignore")
            quantized = torch.quantize_per_channel(weight, scale.double(), zero, 0, torch.qint8)
            self._packed = torch.ops.quantized.linear_prepack(quantized, None)
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        self.register_buffer("bias", bias, persistent=False)
        anchor = torch.zeros(1, self.in_features)
        anchor[0, 0], anchor[0, 1 % self.in_features] = 1.0, -1.0
        self.register_buffer("anchor", anchor, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, self.in_features).float()
        scale = x.abs().amax(dim=1, keepdim=True).clamp_min_(1e-30)
        out = torch.ops.quantized.linear_dynamic(
            torch.cat([x / scale, self.anchor]), self._packed, True
        )[:-1]
        out = out * scale if self.bias is None else torch.addcmul(self.bias, out, scale)
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        bias = self.bias is not None
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={bias}"


def quantize_linears(module: nn.Module, activation_scales: str = "row") -> nn.Module:
    """In place: every ``nn.Linear`` of ``module`` becomes int8. ``row``: ``RowInt8Linear``
    (a row's result never depends on the other rows); ``tensor``: torch's
    ``quantize_dynamic`` (one activation scale for the whole input, per-tensor weights)."""
    if activation_scales not in ACTIVATION_SCALES:
        raise ValueError(f"activation_scales must be one of {ACTIVATION_SCALES}")
    if activation_scales == "tensor":
        from torch.ao.quantization import quantize_dynamic

        with warnings.catch_warnings():  # torch announces torchao as the successor
            warnings.simplefilter("ignore")
            return quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8, inplace=True)
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, RowInt8Linear(child))
    return module
