"""``generation.precision`` reaches melody models: their rows run in the engine's decode loop on
the engine's converted decoder (the condition prefix too), and the loaded model is never changed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from musicgen_train.generation import GenerationEngine, GenerationParams
from musicgen_train.generation.int4 import Int4Linear
from musicgen_train.generation.int8 import RowInt8Linear
from musicgen_train.generation.melody import melody_conditioning
from musicgen_train.sources import load_musicgen

SR = 32_000


@pytest.fixture(scope="module")
def melody_loaded():
    return load_musicgen("tiny-melody")


def _reference() -> np.ndarray:
    t = np.arange(SR) / SR
    return (0.5 * np.sin(2 * np.pi * 261.6 * t)).astype(np.float32)[None]


def _first_scores(engine, features) -> torch.Tensor:
    """The first step's fp32 scores after CFG (the decode loop's observer), after the melody
    and text prefix."""
    loop, seen = engine.new_loop(), []
    loop.observer = lambda row, scores: seen.append(scores.clone())
    params = engine.sampling(GenerationParams(duration=0.1))
    loop.add_row("a calm hum", params, seed=1, chroma=features[0])
    loop.step()
    return seen[0]


def _linear_types(module: nn.Module) -> set[type]:
    kinds = (nn.Linear, RowInt8Linear, Int4Linear)
    return {type(m) for m in module.modules() if isinstance(m, kinds)}


@pytest.mark.parametrize(
    ("precision", "linear", "tolerance"),
    [  # tolerance: of the largest score; int4 rounds the tiny model's weights coarsely
        ("int8", RowInt8Linear, 0.05),
        ("bf16", nn.Linear, 0.05),
        ("int4", Int4Linear, 0.2),
    ],
)
def test_melody_rows_run_the_engines_converted_decoder(melody_loaded, precision, linear, tolerance):
    model = melody_loaded.model
    engine = GenerationEngine(melody_loaded, precision=precision)
    assert engine.decoder is not model.decoder
    assert linear in _linear_types(engine.decoder.model)  # the decoder layers' projections
    # The loaded model is untouched: fp32, plain Linears.
    assert _linear_types(model.decoder) == {nn.Linear}
    assert next(model.text_encoder.parameters()).dtype == torch.float32

    # The converted decoder computes: scores near fp32's, not equal (its weights are rounded).
    features = melody_conditioning(melody_loaded, _reference(), 1)["input_features"]
    ours = _first_scores(engine, features)
    exact = _first_scores(GenerationEngine(melody_loaded, precision="fp32"), features)
    error = (ours - exact).abs().max().item()
    assert 0 < error < tolerance * exact.abs().max().item()


def test_a_seeded_melody_row_at_int8_runs_only_the_int8_decoder(melody_loaded):
    engine = GenerationEngine(melody_loaded, precision="int8")
    params = GenerationParams(duration=0.3, seed=3, top_k=20)
    extra = melody_conditioning(melody_loaded, _reference(), 1)
    calls = {"int8": 0, "loaded": 0}

    def count(name):
        def hook(module, inputs, output):
            calls[name] += 1

        return hook

    hooks = [
        engine.decoder.model.decoder.layers[0].fc1.register_forward_hook(count("int8")),
        melody_loaded.model.decoder.model.decoder.layers[0].fc1.register_forward_hook(
            count("loaded")
        ),
    ]
    try:
        ours = engine.generate(["a calm hum"], params, **extra)
    finally:
        for hook in hooks:
            hook.remove()
    steps = params.generate_kwargs(melody_loaded.frame_rate, engine.num_codebooks)
    # The prefix in one forward, then one per step (CFG's rows in the same batch); the fp32
    # decoder never ran.
    assert calls == {"int8": 1 + steps["max_new_tokens"], "loaded": 0}
    again = engine.generate(["a calm hum"], params, **extra)
    np.testing.assert_array_equal(ours, again)
    fp32 = GenerationEngine(melody_loaded, precision="fp32").generate(
        ["a calm hum"], params, **extra
    )
    assert ours.shape == fp32.shape


def test_fp32_melody_generation_uses_the_loaded_decoder_itself(melody_loaded):
    engine = GenerationEngine(melody_loaded, precision="fp32")
    assert engine.decoder is melody_loaded.model.decoder
