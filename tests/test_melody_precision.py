"""``generation.precision`` reaches melody models, which generate through transformers' ``generate``
(``GenerationEngine.generation_model``): the decoder it runs is the engine's converted copy, the
loaded model is never changed, and the seeded audio is what ``generate`` gives on that copy."""

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


def _first_logits(model, loaded, features) -> torch.Tensor:
    """The decoder's logits for the start token, after the melody and text prefix (fp32)."""
    inputs = loaded.processor(text=["a calm hum"], padding=True, return_tensors="pt")
    k = loaded.model.config.decoder.num_codebooks
    start = int(loaded.model.generation_config.decoder_start_token_id)
    dtype = model.audio_enc_to_dec_proj.weight.dtype
    with torch.inference_mode():
        out = model(
            **inputs,
            input_features=features["input_features"].to(dtype),
            decoder_input_ids=torch.full((k, 1), start),
        )
    return out.logits.float()


def _linear_types(module: nn.Module) -> set[type]:
    kinds = (nn.Linear, RowInt8Linear, Int4Linear)
    return {type(m) for m in module.modules() if isinstance(m, kinds)}


@pytest.mark.parametrize(
    ("precision", "linear", "body", "tolerance"),
    [  # tolerance: of the largest logit; int4 rounds the tiny model's weights coarsely
        ("int8", RowInt8Linear, torch.float32, 0.05),
        ("bf16", nn.Linear, torch.bfloat16, 0.05),
        ("int4", Int4Linear, torch.bfloat16, 0.2),
    ],
)
def test_melody_generation_runs_the_engines_converted_decoder(
    melody_loaded, precision, linear, body, tolerance
):
    model = melody_loaded.model
    engine = GenerationEngine(melody_loaded, precision=precision)
    view = engine.generation_model()
    assert view is not model and view.decoder is engine.decoder
    assert linear in _linear_types(view.decoder.model)  # the decoder layers' projections
    assert next(view.text_encoder.parameters()).dtype == body
    assert view.audio_encoder is model.audio_encoder  # the codec is shared, fp32
    # The loaded model is untouched: fp32, plain Linears, its own modules.
    assert _linear_types(model.decoder) == {nn.Linear}
    assert next(model.text_encoder.parameters()).dtype == torch.float32
    assert engine.generation_model().text_encoder is view.text_encoder  # cast once

    # The converted decoder computes: logits near fp32's, not equal (its weights are rounded).
    features = melody_conditioning(melody_loaded, _reference(), 1)
    ours = _first_logits(view, melody_loaded, features)
    exact = _first_logits(model, melody_loaded, features)
    error = (ours - exact).abs().max().item()
    assert 0 < error < tolerance * exact.abs().max().item()


def test_a_seeded_melody_row_at_int8_is_generate_on_the_converted_model(melody_loaded):
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
    # Every step ran the int8 decoder (the first with the whole prefix); the fp32 one never ran.
    assert calls == {"int8": steps["max_new_tokens"], "loaded": 0}
    np.testing.assert_array_equal(ours, engine.generate(["a calm hum"], params, **extra))

    inputs = melody_loaded.processor(text=["a calm hum"], padding=True, return_tensors="pt")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        theirs = engine.generation_model().generate(**inputs, **extra, **steps)
    # the same codes; the audio up to float rounding (the engine decodes with its fast codec)
    np.testing.assert_allclose(ours, theirs.float().numpy()[..., : ours.shape[-1]], atol=1e-5)


def test_fp32_melody_generation_uses_the_loaded_model_itself(melody_loaded):
    engine = GenerationEngine(melody_loaded, precision="fp32")
    assert engine.generation_model() is melody_loaded.model
