"""int8 Linear layers with one activation scale per row: numerics and batch independence."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from musicgen_train.generation.int8 import RowInt8Linear, quantize_linears


def _emulated(linear: nn.Linear, x: torch.Tensor, asymmetric: bool = False) -> torch.Tensor:
    """The same arithmetic written out: weights symmetric int8 per output channel; each row
    divided by its absolute maximum, then quantised on [-1, 1] with fbgemm's reduced range
    (scale 2 / 127, zero point 64; the kernel clamps to uint8's 0..255 only, so +1 becomes
    128), int32 sums, scaled back."""
    w = linear.weight.detach().double()
    w_scale = w.abs().amax(dim=1) / 127
    w_q = torch.clamp(torch.round(w / w_scale[:, None]), -127, 127)
    centre = torch.zeros(x.shape[0], 1)
    if asymmetric:  # centred rows: midpoint and half-width of each row's range
        low, high = x.min(dim=1, keepdim=True).values, x.max(dim=1, keepdim=True).values
        row, centre = (high - low) * 0.5, (high + low) * 0.5
        normed = ((x - centre) / row).clamp(-1, 1)
    else:
        row = x.abs().amax(dim=1, keepdim=True)
        normed = x / row
    x_scale, zero = 2.0 / 127, 64
    inverse = torch.tensor(1 / x_scale, dtype=torch.float32)  # fp32, as the kernel rounds
    x_q = torch.clamp(torch.round(normed * inverse) + zero, 0, 255) - zero
    out = (x_q.double() @ w_q.T) * x_scale * w_scale[None] * row.double()
    out += centre.double() * (w_q * w_scale[:, None]).sum(dim=1)[None]
    return (out + linear.bias.detach().double()).float()


@pytest.mark.parametrize("asymmetric", [False, True])
@pytest.mark.parametrize("rows, n_in, n_out", [(1, 64, 48), (5, 128, 96), (16, 256, 40)])
def test_row_int8_linear_computes_the_quantised_product(rows, n_in, n_out, asymmetric):
    torch.manual_seed(0)
    linear = nn.Linear(n_in, n_out)
    x = torch.randn(rows, n_in) * torch.logspace(-2, 2, rows)[:, None]  # rows of any size
    if asymmetric:
        x = torch.nn.functional.gelu(x)  # what fc2 reads
    ours = RowInt8Linear(linear, asymmetric=asymmetric)(x)
    exact = linear(x)
    # Close to the float product (about 1 % for 7-bit activations, 8-bit weights)...
    error = (ours - exact).norm(dim=1) / exact.norm(dim=1)
    assert error.max() < 0.03
    # ...and equal to the written-out quantised arithmetic up to float rounding.
    emulated = _emulated(linear, x, asymmetric)
    assert ((ours - emulated).norm(dim=1) < 1e-3 * (ours - exact).norm(dim=1)).all()


def test_centred_rows_halve_the_error_after_gelu():
    torch.manual_seed(5)
    linear = nn.Linear(512, 128)
    x = torch.nn.functional.gelu(torch.randn(8, 512) * 2)
    exact = linear(x).detach()
    errors = [
        float((RowInt8Linear(linear, asymmetric=a)(x) - exact).norm() / exact.norm())
        for a in (False, True)
    ]
    assert errors[1] < 0.7 * errors[0]


@pytest.mark.parametrize("asymmetric", [False, True])
def test_a_rows_result_does_not_depend_on_the_other_rows(asymmetric):
    torch.manual_seed(1)
    layer = RowInt8Linear(nn.Linear(256, 512), asymmetric=asymmetric)
    row = torch.randn(1, 256)
    alone = layer(row)
    for companions in (torch.randn(3, 256) * 100, torch.randn(7, 256) * 1e-3, torch.zeros(1, 256)):
        together = layer(torch.cat([companions, row, companions]))
        n = companions.shape[0]
        assert torch.equal(together[n : n + 1], alone)
    assert torch.allclose(layer(torch.zeros(2, 256)), layer.bias.expand(2, -1), atol=1e-6)
    # torch's dynamic quantisation shares one scale, which is what this module avoids.
    dynamic = quantize_linears(nn.Sequential(nn.Linear(256, 512)), "tensor")
    mixed = dynamic(torch.cat([torch.randn(3, 256) * 100, row]))[3:]
    assert not torch.equal(mixed, dynamic(row))


def test_quantize_linears_replaces_every_linear_and_keeps_shapes():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Sequential(nn.Linear(16, 4, bias=False)))
    x = torch.randn(2, 3, 8)
    expected = model(x)
    quantize_linears(model)
    assert [type(m).__name__ for m in model.modules()].count("RowInt8Linear") == 2
    assert not model[0].asymmetric
    out = model(x)
    assert out.shape == expected.shape == (2, 3, 4)
    assert (out - expected).norm() / expected.norm() < 0.05
    with pytest.raises(ValueError, match="activation_scales"):
        quantize_linears(model, "channel")


def test_position_runs():
    from musicgen_train.generation.attention import position_runs

    assert position_runs([3, 3, 0, 3, 3, 0]) == [(0, 2, 3), (2, 3, 0), (3, 5, 3), (5, 6, 0)]
    assert position_runs([7]) == [(0, 1, 7)]


@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_a_rows_scores_are_bitwise_what_they_are_alone(tiny_loaded, precision):
    """Prompts of different lengths (cross-attention grouped by length, not padded) and a row
    joining at step 2 (self-attention per run of slots at one position, not masked): at int8
    every next-token score of every row equals, bit for bit, what the row gets alone. At fp32
    the float matrix products themselves round differently for another number of rows (the
    BLAS picks its kernel by shape), so there they agree to float rounding only."""
    from musicgen_train.generation import GenerationEngine
    from musicgen_train.generation.decode import SamplingParams

    engine = GenerationEngine(tiny_loaded, precision=precision)
    prompts = ["a", "a calm jazz tune with a walking bass and brushed drums", "lofi"]
    params = SamplingParams(max_new_tokens=6, guidance_scale=3.0, top_k=50)

    def scores_of(prompt_indices, join_late=None):
        loop = engine.new_loop()
        seen: dict[int, list] = {}
        loop.observer = lambda row, s: seen.setdefault(row.tag, []).append(s.clone())
        for i in prompt_indices:
            loop.add_row(prompts[i], params, seed=20 + i, tag=i)
        steps = 0
        while loop.rows:
            if steps == 2 and join_late is not None:
                loop.add_row(prompts[join_late], params, seed=20 + join_late, tag=join_late)
            loop.step()
            steps += 1
        return seen

    together = scores_of([0, 1], join_late=2)
    for i in range(3):
        alone = scores_of([i])[i]
        assert len(alone) == len(together[i]) == 6
        for a, b in zip(alone, together[i], strict=True):
            if precision == "int8":
                assert torch.equal(a, b)
            else:
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
