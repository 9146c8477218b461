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

The feed-forward's second Linear (``fc2``) reads GELU's output, which is almost never below
-0.17: scaled symmetrically, half of the 7-bit range would go unused. There each row is centred
first (``asymmetric``, the Linears named in ``ASYMMETRIC``): ``x' = (x - c) / h`` with ``c``,
``h`` the midpoint and half-width of its range (clamped to [-1, 1]: the division may round a
hair past 1, which would move the kernel's range), and ``W x = h W x' + c W 1`` (``W 1``: the
row sums of the int8 weights as dequantised): one bit finer for a few element-wise operations.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

ACTIVATION_SCALES = ("row", "tensor")
ASYMMETRIC = ("fc2",)  # Linears fed by GELU: rows centred before quantising


class RowInt8Linear(nn.Module):
    """``nn.Linear`` with int8 weights (per output channel) and int8 activations (per row)."""

    def __init__(self, linear: nn.Linear, asymmetric: bool = False):
        super().__init__()
        self.asymmetric = asymmetric
        weight = linear.weight.detach().float()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        scale = weight.abs().amax(dim=1).clamp_min(1e-12) / 127
        zero = torch.zeros(self.out_features, dtype=torch.long)
        with warnings.catch_warnings():  # torch announces torchao as the successor
            warnings.simplefilter("ignore")
            quantized = torch.quantize_per_channel(weight, scale.double(), zero, 0, torch.qint8)
            self._packed = torch.ops.quantized.linear_prepack(quantized, None)
        # W 1 of the dequantised weights, for centred rows
        row_sums = quantized.dequantize().sum(dim=1) if asymmetric else None
        self.register_buffer("row_sums", row_sums, persistent=False)
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        self.register_buffer("bias", bias, persistent=False)
        anchor = torch.zeros(1, self.in_features)
        anchor[0, 0], anchor[0, 1 % self.in_features] = 1.0, -1.0
        self.register_buffer("anchor", anchor, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, self.in_features).float()
        if self.asymmetric:
            low, high = torch.aminmax(x, dim=1, keepdim=True)
            scale = ((high - low) * 0.5).clamp_min_(1e-30)
            centre = (high + low) * 0.5
            x = x - centre
        else:
            scale = x.abs().amax(dim=1, keepdim=True).clamp_min_(1e-30)
        rows = torch.cat([x / scale, self.anchor])
        if self.asymmetric:  # |x| / max|x| <= 1 exactly; (x - c) / h may round past 1
            rows.clamp_(-1.0, 1.0)
        out = torch.ops.quantized.linear_dynamic(rows, self._packed, True)[:-1]
        offset = self.bias
        if self.asymmetric:  # c W 1 (+ bias)
            offset = centre * self.row_sums if offset is None else offset + centre * self.row_sums
        out = out * scale if offset is None else torch.addcmul(offset, out, scale)
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        bias = self.bias is not None
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={bias}, "
            f"asymmetric={self.asymmetric}"
        )


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
                setattr(parent, name, RowInt8Linear(child, asymmetric=name in ASYMMETRIC))
    return module
