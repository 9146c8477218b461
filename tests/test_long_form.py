"""Long form: windows of continuation on codes (length, seams, determinism) and the seam
measure (spectral flux) checked against hand-made signals."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen_train.cli import main
from musicgen_train.generation import GenerationEngine, GenerationParams
from musicgen_train.generation.long_form import (
    long_form_codes,
    plan,
    seam_flux,
    seam_samples,
    spectral_flux,
)
from musicgen_train.generation.rows import GenerationInputError

PROMPT = "a slow ambient piece"
HOP = 640


def test_plan_counts_frames():
    # 2.5 s at 50 frames/s in windows of 50 frames advancing by 30: 50 + 30 + 30 + 15.
    assert plan(125, 50, 30) == [(0, 50), (20, 30), (20, 30), (20, 15)]
    assert plan(40, 50, 30) == [(0, 40)]
    assert plan(100, 50, 30, prompt=10) == [(10, 40), (20, 30), (20, 30)]
    assert seam_samples(plan(125, 50, 30), HOP) == [50 * HOP, 80 * HOP, 110 * HOP]
    with pytest.raises(GenerationInputError, match="below the window"):
        plan(100, 50, 50)


def test_windows_continue_the_previous_tail(tiny_loaded):
    engine = GenerationEngine(tiny_loaded, precision="fp32", window_seconds=1.0, extend_stride=0.6)
    params = GenerationParams(duration=2.5, guidance_scale=3.0, top_k=50, seed=3)
    made = long_form_codes(engine, [PROMPT, "rock"], params, [3, 4], window=1.0, stride=0.6)
    assert made.context_frames == 20
    assert [w[0].shape[-1] for w in made.windows] == [50, 50, 50, 35]
    for row in range(2):
        codes = made.codes[row]
        assert codes.shape == (4, 125)
        sofar = made.windows[0][row]
        for window in made.windows[1:]:
            # Each window's first 20 frames are the last 20 frames made before it.
            assert torch.equal(window[row][:, :20], sofar[:, -20:])
            sofar = torch.cat([sofar, window[row][:, 20:]], dim=1)
        assert torch.equal(sofar, codes)
    # The first window is what one window with the same seed gives.
    loop = engine.new_loop()
    alone = engine.add(loop, PROMPT, GenerationParams(duration=1.0, top_k=50), seed=3)
    while loop.rows:
        loop.step()
    assert torch.equal(alone.codes(), made.windows[0][0])


def test_long_form_audio_is_deterministic_and_sized(tiny_loaded):
    engine = GenerationEngine(tiny_loaded, precision="fp32", window_seconds=1.0, extend_stride=0.6)
    params = GenerationParams(duration=2.5, top_k=50, seed=9)
    first = engine.generate([PROMPT], params)
    assert first.shape == (1, 1, 80_000)
    np.testing.assert_array_equal(first, engine.generate([PROMPT], params))
    other = engine.generate([PROMPT], GenerationParams(duration=2.5, top_k=50, seed=10))
    assert not np.array_equal(first, other)
    # With an audio prompt: the prompt's 10 frames, then 2.5 s.
    tone = (0.3 * np.sin(np.arange(6400) * 2 * np.pi * 330 / 32_000)).astype(np.float32)[None]
    continued = engine.generate([PROMPT], params, audio_prompt=tone)
    assert continued.shape == (1, 1, (10 + 125) * HOP)


def test_generate_command_writes_long_form(tmp_path):
    out = tmp_path / "long.wav"
    args = ["generate", "model=tiny", "prompt=x", "duration=2.2", "seed=1", f"output={out}"]
    assert main([*args, "generation.window_seconds=1.0", "generation.extend_stride=0.6"]) == 0
    audio, rate = sf.read(out)
    assert rate == 32_000 and len(audio) == 2.2 * 32_000


def test_spectral_flux_finds_a_click_and_not_a_steady_tone():
    rate = 32_000
    t = np.arange(rate) / rate
    steady = 0.5 * np.sin(2 * np.pi * 440 * t)
    # A steady tone changes nothing frame to frame: flux near 0 everywhere.
    assert spectral_flux(steady).max() < 0.05
    # A hard switch to another pitch at 0.5 s (a seam that does not join) stands out.
    switched = np.where(t < 0.5, steady, 0.5 * np.sin(2 * np.pi * 1250 * t))
    measured = seam_flux(switched, [rate // 2])
    assert measured["ratio"] > 10 and measured["seam_frames"] >= 3
    # Against the formula by hand for two frames: rise of the magnitude spectrum.
    frames = np.stack([switched[i * 256 : i * 256 + 1024] for i in (0, 1)]) * np.hanning(1024)
    mags = np.abs(np.fft.rfft(frames, axis=1))
    expected = np.linalg.norm(np.maximum(mags[1] - mags[0], 0)) / np.linalg.norm(mags[1])
    assert spectral_flux(switched)[0] == pytest.approx(expected, rel=1e-9)
