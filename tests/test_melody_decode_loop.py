"""Melody models in the engine's decode loop: the condition (chroma, then text) is a prefix of
the decoder's input, prefilled once per row. At fp32 a seeded row is transformers' ``generate``
token for token; in a batch, or joining a running one, it is what it is alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from evaluation_models import tone
from generation_helpers import assert_same_generation, recorder

from musicgen_train.generation import GenerationEngine, GenerationParams
from musicgen_train.generation.decode import GenerationInputError
from musicgen_train.generation.melody import melody_conditioning
from musicgen_train.sources import load_musicgen

RATE = 32_000
PROMPT = "a late row"


@pytest.fixture(scope="module")
def melody_loaded():
    return load_musicgen("tiny-melody")


@pytest.fixture(scope="module")
def engine(melody_loaded):
    return GenerationEngine(melody_loaded, precision="fp32")


def _generate(loaded, prompt, params, features, steps=None):
    """transformers' own ``generate``, seeded as the engine seeds a row: audio and ids."""
    model = loaded.model
    inputs = loaded.processor(text=[prompt], padding=True, return_tensors="pt")
    kwargs = params.generate_kwargs(loaded.frame_rate, model.config.decoder.num_codebooks)
    record, criteria = recorder()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(params.seed)
        audio = model.generate(**inputs, **features, **kwargs, stopping_criteria=criteria)
    return audio.float().numpy(), record.ids


@pytest.mark.parametrize(
    ("guidance", "with_melody"), [(3.0, True), (3.0, False), (1.0, True)], ids=str
)
def test_fp32_melody_rows_are_transformers_generate(melody_loaded, engine, guidance, with_melody):
    params = GenerationParams(duration=0.4, seed=11, top_k=20, guidance_scale=guidance)
    melody = tone(1.5, RATE, 392.0)
    features = melody_conditioning(melody_loaded, melody, 1, RATE) if with_melody else {}
    record, criteria = recorder()
    ours = engine.generate(["a calm hum"], params, stopping_criteria=criteria, **features)
    theirs, theirs_ids = _generate(melody_loaded, "a calm hum", params, features)
    assert ours.shape == (1, 1, int(0.4 * RATE))
    assert_same_generation(ours, theirs[..., : ours.shape[-1]], record.ids, theirs_ids)
    if with_melody:  # melody= (the file's chroma made by the engine) is the same request
        np.testing.assert_array_equal(ours, engine.generate(["a calm hum"], params, melody=melody))


def test_melody_rows_in_a_batch_are_what_they_are_alone(melody_loaded, engine):
    # prompts of different lengths: the rows sit at different positions, attended in groups
    prompts = ["a calm hum", "drums", "a long and winding bass line"]
    melodies = [tone(1.0, RATE, f) for f in (262.0, 392.0, 440.0)]
    features = torch.cat(
        [melody_conditioning(melody_loaded, m, 1, RATE)["input_features"] for m in melodies]
    )
    params = GenerationParams(duration=0.3, seed=4, top_k=20)
    record, criteria = recorder()
    batch = engine.generate(prompts, params, input_features=features, stopping_criteria=criteria)
    assert batch.shape == (3, 1, int(0.3 * RATE))
    k = melody_loaded.model.config.decoder.num_codebooks
    for i, prompt in enumerate(prompts):
        alone_record, alone_criteria = recorder()
        alone = engine.generate(
            [prompt],
            GenerationParams(duration=0.3, seed=4 + i, top_k=20),
            input_features=features[i : i + 1],
            stopping_criteria=alone_criteria,
        )
        # the same tokens; the audio up to the codec's rounding (a batch of 3 vs 1)
        rows = record.ids[i * k : (i + 1) * k]
        assert_same_generation(batch[i : i + 1], alone, rows, alone_record.ids)
    # melody= as a list, one reference per row (None: the null chroma), is the same request
    listed = engine.generate(prompts, params, melody=melodies)
    np.testing.assert_array_equal(listed, batch)
    mixed = engine.generate(prompts, params, melody=[melodies[0], None, melodies[2]])
    np.testing.assert_array_equal(mixed[[0, 2]], batch[[0, 2]])
    assert not np.array_equal(mixed[1], batch[1])  # the null chroma: another row
    with pytest.raises(GenerationInputError, match="melody= has 2 entries: give one per prompt"):
        engine.generate(prompts, params, melody=melodies[:2])


def test_a_melody_row_joining_a_running_batch_is_what_it_is_alone(melody_loaded, engine):
    chroma = melody_conditioning(melody_loaded, tone(1.0, RATE, 330.0), 1, RATE)
    chroma = chroma["input_features"][0]
    params = engine.sampling(GenerationParams(duration=0.3, top_k=20))
    loop = engine.new_loop()
    first = loop.add_row("an early row", params, seed=1)
    for _ in range(5):
        loop.step()
    late = loop.add_row(PROMPT, params, seed=2, chroma=chroma)
    while loop.rows:
        loop.step()
    for row, prompt, seed, melody in (
        (first, "an early row", 1, None),
        (late, "a late row", 2, chroma),
    ):
        alone = engine.new_loop()
        again = alone.add_row(prompt, params, seed=seed, chroma=melody)
        while alone.rows:
            alone.step()
        assert torch.equal(row.tokens, again.tokens)
    assert (
        late.offset == melody_loaded.model.config.chroma_length + len(PROMPT) + 1
    )  # ByT5: a byte each, </s>


def test_bad_melody_inputs_are_one_clear_line(melody_loaded, engine, tiny_loaded):
    params = GenerationParams(duration=0.1, seed=1)
    features = melody_conditioning(melody_loaded, tone(1.0, RATE, 330.0), 1, RATE)
    with pytest.raises(GenerationInputError, match=r"input_features must be \[2, frames, 12\]"):
        engine.generate(["a", "b"], params, **features)
    with pytest.raises(GenerationInputError, match="melody= or input_features, not both"):
        engine.generate(["a"], params, melody=tone(1.0, RATE, 330.0), **features)
    with pytest.raises(GenerationInputError, match="unknown generation input attention_mask"):
        engine.generate(["a"], params, attention_mask=torch.ones(1, 3))
    text = GenerationEngine(tiny_loaded, precision="fp32")
    with pytest.raises(Exception, match="needs a melody model"):
        text.generate(["a"], params, **features)


def test_a_melody_models_limit_leaves_room_for_its_chroma(melody_loaded, engine):
    # 2047 positions after the start token: the chroma's 235 first, then the 4-codebook delay.
    config = melody_loaded.model.config
    assert engine.condition_positions == config.chroma_length == 235
    assert engine.max_duration == pytest.approx((2047 - 235 - 4 + 1) / 50)
    # A longer clip is made window by window, and no window may pass the limit.
    wide = GenerationEngine(melody_loaded, precision="fp32", window_seconds=60)
    assert wide.window_seconds == pytest.approx(engine.max_duration)
