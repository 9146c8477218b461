"""int4 Linear layers (4-bit weights in groups, bf16 activations): numerics, batch independence,
which Linears convert, and the engine at ``precision=int4``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from musicgen_train.errors import ConfigError
from musicgen_train.generation import GenerationEngine, GenerationParams
from musicgen_train.generation.int4 import Int4Linear, int4_supported, quantize_linears_int4
from musicgen_train.generation.precision import prepare_decoder, resolve_precision
from musicgen_train.generation.quality import compare_precision

pytestmark = pytest.mark.skipif(not int4_supported(), reason="this torch has no CPU int4 kernel")


def _emulated(linear: nn.Linear, x: torch.Tensor, group: int) -> torch.Tensor:
    """The same arithmetic written out in float64: each group of ``group`` inputs of an output
    channel rounded to 16 levels between its min and max; scale and offset as bf16 (what the
    kernel stores); inputs rounded to bf16."""
    w = linear.weight.detach().double()
    n, k = w.shape
    blocks = w.reshape(n, k // group, group)
    low, high = blocks.min(dim=-1).values, blocks.max(dim=-1).values
    scale = (high - low) / 15
    levels = torch.clamp(torch.round((blocks - low[..., None]) / scale[..., None]), 0, 15)
    scale_bf = scale.bfloat16().double()
    offset_bf = (low + 8 * scale).bfloat16().double()
    dequantized = ((levels - 8) * scale_bf[..., None] + offset_bf[..., None]).reshape(n, k)
    out = x.bfloat16().double() @ dequantized.T
    return out + linear.bias.detach().bfloat16().double()


@pytest.mark.parametrize("rows, n_in, n_out, group", [(1, 64, 48, 32), (5, 256, 96, 64)])
def test_int4_linear_computes_the_grouped_4_bit_product(rows, n_in, n_out, group):
    torch.manual_seed(0)
    linear = nn.Linear(n_in, n_out)
    x = torch.randn(rows, n_in)
    ours = Int4Linear(linear, group)(x).double()
    assert ours.shape == (rows, n_out)
    emulated = _emulated(linear, x, group)
    exact = linear(x).detach().double()
    # The written-out arithmetic to bf16's output rounding (8 bits of mantissa)...
    assert ((ours - emulated).abs() <= 1e-2 * emulated.abs() + 1e-3).all()
    # ...and within what 16 levels a group give of the float product (~8 % for Gaussian weights).
    error = (ours - exact).norm() / exact.norm()
    assert 0.01 < error < 0.15


def test_a_row_gives_the_same_bits_alone_and_in_a_batch():
    torch.manual_seed(1)
    layer = Int4Linear(nn.Linear(128, 64), 32)
    x = torch.randn(8, 128)
    together = layer(x)
    alone = torch.cat([layer(x[i : i + 1]) for i in range(8)])
    assert torch.equal(together, alone)


def test_only_linears_the_kernel_takes_are_converted():
    model = nn.Sequential(nn.Linear(64, 32), nn.Linear(32, 100), nn.Linear(100, 48))
    quantize_linears_int4(model)
    # 64 -> 32: yes; 32 -> 100: 100 outputs are not a multiple of 16; 100 inputs: no group fits
    assert [type(m).__name__ for m in model] == ["Int4Linear", "Linear", "Linear"]
    assert model[0].group_size == 32


def test_int4_precision_resolution():
    assert resolve_precision("int4", "cpu") == "int4"
    with pytest.raises(ConfigError, match="CPU only"):
        resolve_precision("int4", "cuda")


def test_int4_decoder_copy_leaves_the_model_and_generates(tiny_loaded):
    model = tiny_loaded.model
    decoder = prepare_decoder(model.decoder, "int4")
    converted = [m for m in decoder.modules() if isinstance(m, Int4Linear)]
    # fused: 2 layers x (QKV + out + 4 cross + 2 feed-forward) + one LM head matrix
    assert len(converted) == 2 * 8 + 1
    assert decoder.model.decoder.layer_norm.weight.dtype == torch.bfloat16
    assert all(type(m) is nn.Linear for m in model.decoder.modules() if isinstance(m, nn.Linear))
    assert next(model.decoder.parameters()).dtype == torch.float32  # the loaded model untouched
    engine = GenerationEngine(tiny_loaded, precision="int4")
    audio = engine.generate(["jazz piano"], GenerationParams(duration=0.3, seed=1))
    assert audio.shape == (1, 1, 9600) and audio.dtype == np.float32 and np.isfinite(audio).all()


def test_int4_quality_is_measured_against_fp32(tiny_loaded):
    model, processor = tiny_loaded.model, tiny_loaded.processor
    int8 = compare_precision(model, processor, "int8", ["a", "jazz piano"], steps=8)
    int4 = compare_precision(model, processor, "int4", ["a", "jazz piano"], steps=8)
    assert int4["precision"] == "int4" and int4["activation_scales"] is None
    # 4-bit weights cost more than 8-bit ones, and still leave the distribution close.
    assert int8["kl_nats"] < int4["kl_nats"] < 0.05
    assert 0.5 < int4["argmax_agreement"] <= 1.0
