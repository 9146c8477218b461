"""Melody models continue an audio prompt and go beyond the window in the engine's decode loop
(their condition a prefix of the decoder's input); a melody and a prompt change what is made."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from evaluation_models import tone
from generation_helpers import assert_same_generation

from musicgen_train.audio import write_audio
from musicgen_train.cli import main
from musicgen_train.generation import GenerationEngine, GenerationParams
from musicgen_train.generation.continuation import prompt_codes
from musicgen_train.generation.long_form import long_form_codes
from musicgen_train.generation.melody import melody_conditioning, melody_window, row_chroma
from musicgen_train.sources import load_musicgen

RATE, HOP = 32_000, 640
PROMPT = "a calm hum"


@pytest.fixture(scope="module")
def melody_loaded():
    return load_musicgen("tiny-melody")


def melody_codes(engine, prompts, params, seeds, *, melody=None, audio_prompt=None):
    """Each row's codes ``[K, frames]`` (the audio prompt's first), before decoding."""
    chroma = row_chroma(engine.loaded, len(prompts), melody, {}, RATE, engine.window_seconds)
    prefix = None if audio_prompt is None else engine.prompt_codes(audio_prompt)
    made = long_form_codes(
        engine,
        prompts,
        params,
        seeds,
        window=engine.window_seconds,
        stride=engine.extend_stride,
        prefixes=[prefix] * len(prompts),
        chroma=chroma,
    )
    return made.codes


def _noise(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.3 * rng.standard_normal(int(seconds * RATE))).astype(np.float32)[None]


def test_melody_continuation_is_transformers_generate_with_the_prompt_codes(melody_loaded):
    engine = GenerationEngine(melody_loaded, precision="fp32")
    start, melody = tone(0.3, RATE, 220.0), tone(2.0, RATE, 330.0)
    params = GenerationParams(duration=0.2, seed=3, top_k=20)
    ours = engine.generate([PROMPT], params, audio_prompt=start, melody=melody)
    frames = -(-start.shape[-1] // HOP)  # 15 prompt frames
    assert ours.shape == (1, 1, frames * HOP + int(0.2 * RATE))

    model = melody_loaded.model
    inputs = melody_loaded.processor(text=[PROMPT], padding=True, return_tensors="pt")
    kwargs = params.generate_kwargs(melody_loaded.frame_rate, model.config.decoder.num_codebooks)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        theirs = model.generate(
            **inputs,
            **melody_conditioning(melody_loaded, melody, 1, RATE),
            decoder_input_ids=prompt_codes(model, start),
            **kwargs,
        )
    # the engine's decode loop against transformers' generate: the same tokens; the audio up to
    # the codec's rounding (the engine decodes with its FastCodecDecoder)
    assert_same_generation(ours, theirs.float().numpy()[..., : ours.shape[-1]])


def test_the_prompt_and_the_melody_change_the_output():
    # The tiny model's random weights give near-flat next-token distributions that hardly
    # depend on the context (logits within +-0.3, moved by ~0.01 by another prompt), so one
    # seeded draw picks the same token under most contexts. Heads scaled x30 make the draws
    # follow those differences, as a trained model's peaked distributions do.
    loaded = load_musicgen("tiny-melody")
    with torch.no_grad():
        for head in loaded.model.decoder.lm_heads:
            head.weight.mul_(30.0)
    engine = GenerationEngine(loaded, precision="fp32")
    params = GenerationParams(duration=0.5, seed=7, top_k=20)
    melody = tone(1.0, RATE, 392.0)  # G: a tone on C would be the null chroma's pitch class
    prompts = {"tone": tone(0.2, RATE, 220.0), "noise": _noise(0.2, 1)}
    codes = {
        name: melody_codes(engine, [PROMPT], params, [7], melody=melody, audio_prompt=prompt)[0]
        for name, prompt in prompts.items()
    }
    # The prompt's own codes come first (so the outputs differ there), then 25 sampled frames.
    for name, prompt in prompts.items():
        assert codes[name].shape == (4, 10 + 25)
        assert torch.equal(codes[name][:, :10], prompt_codes(loaded.model, prompt))
    assert not torch.equal(codes["tone"][:, :10], codes["noise"][:, :10])
    # The prompt reaches the decoder: the distribution of the first sampled frame moves with it
    # (even the x30 heads do not make this random model's draws follow it: its next token
    # depends almost only on the current one).
    inputs = loaded.processor(text=[PROMPT], padding=True, return_tensors="pt")
    first = {}
    for name, made in codes.items():
        ids = torch.cat([torch.full((4, 1), 64), made[:, :10]], dim=1)  # start + the prompt
        with torch.no_grad():
            logits = loaded.model(**inputs, **_chroma(loaded, melody), decoder_input_ids=ids)
        first[name] = logits.logits[0, -1]  # codebook 0's next frame
    assert (first["tone"] - first["noise"]).abs().max() > 1e-2

    # The melody changes what is sampled: a G and an A give different codes.
    made = [
        melody_codes(engine, [PROMPT], params, [7], melody=m)[0]
        for m in (melody, tone(1.0, RATE, 440.0))
    ]
    assert (made[0] != made[1]).sum() > 0
    again = melody_codes(engine, [PROMPT], params, [7], melody=melody)[0]
    assert torch.equal(made[0], again)  # the same seed and melody: the same codes


def _chroma(loaded, melody):
    return melody_conditioning(loaded, melody, 1, RATE)


def test_melody_long_form_windows(melody_loaded):
    engine = GenerationEngine(
        melody_loaded, precision="fp32", window_seconds=1.0, extend_stride=0.6
    )
    melody = np.concatenate([tone(0.7, RATE, 261.6), tone(0.7, RATE, 392.0)], axis=1)
    params = GenerationParams(duration=2.2, seed=5, top_k=20)
    long = melody_codes(engine, [PROMPT, "drums"], params, [5, 6], melody=melody)
    assert [c.shape for c in long] == [(4, 110), (4, 110)]  # 50 + 30 + 30 frames
    # The first window is what duration=window gives with the same seed and melody.
    one = melody_codes(
        engine, [PROMPT], GenerationParams(duration=1.0, top_k=20), [5], melody=melody
    )[0]
    assert torch.equal(long[0][:, :50], one)
    audio = engine.generate([PROMPT], params, melody=melody)
    assert audio.shape == (1, 1, int(round(2.2 * RATE)))
    np.testing.assert_array_equal(audio, engine.decode_codes(long[0][None])[..., : audio.shape[-1]])

    # A later window's melody is the reference read periodically from the window's start.
    window = melody_window(melody, 30 * HOP, RATE)  # the 2nd window starts at frame 30 (0.6 s)
    assert window.shape == (1, RATE)
    np.testing.assert_array_equal(window[0, :100], melody[0, 19_200:19_300])
    np.testing.assert_array_equal(window[0, melody.shape[-1] - 19_200], melody[0, 0])


def test_cli_continues_and_extends_on_a_melody_model(tmp_path, monkeypatch):
    import tqdm

    bars = []

    class CountingBar(tqdm.tqdm):  # the progress bar counts every sampled step, as they come
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.counted = 0
            bars.append(self)

        def update(self, n=1):
            self.counted += n
            return super().update(n)

    monkeypatch.setattr(tqdm, "tqdm", CountingBar)  # generate imports it when it runs
    start, ref = tmp_path / "start.wav", tmp_path / "ref.wav"
    write_audio(start, tone(0.2, RATE, 220.0), RATE)
    write_audio(ref, tone(1.0, RATE, 330.0), RATE)
    out = tmp_path / "more.wav"
    args = ["generate", "model=tiny-melody", f"prompt={PROMPT}", "duration=0.3", "seed=1"]
    assert main([*args, f"audio_prompt={start}", f"melody={ref}", f"output={out}"]) == 0
    audio, rate = sf.read(out)
    assert rate == RATE and len(audio) == 10 * HOP + int(0.3 * RATE)

    out = tmp_path / "long.wav"
    long = ["generation.window_seconds=0.6", "generation.extend_stride=0.4", "duration=1.0"]
    assert main([*args[:4], "seed=1", *long, f"melody={ref}", f"output={out}"]) == 0
    audio, rate = sf.read(out)
    assert len(audio) == RATE
    # one step at a time: 0.3 s after a prompt = 15 + 3 steps; 1.0 s in windows of 0.6 s
    # advancing by 0.4 s = (30 + 3) + (20 + 3) steps
    assert [(bar.counted, bar.total) for bar in bars] == [(18, 18), (56, 56)]
