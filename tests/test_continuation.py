"""Continuing an audio prompt: the engine against transformers' generate with ``input_values``,
per-row prompts in a running batch, and ``musicgen-train generate audio_prompt=...``."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from generation_helpers import assert_same_generation, recorder

from musicgen_train.audio import write_audio
from musicgen_train.cli import main
from musicgen_train.generation import GenerationEngine, GenerationParams
from musicgen_train.generation.decode import GenerationInputError

PROMPT = "a calm tune with soft drums"
RATE = 32_000
HOP = 640  # the tiny codec's samples per frame (50 frames/s)


def _tone(seconds: float, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(round(seconds * RATE))) / RATE
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)[None]


def _transformers(loaded, audio, params, **extra) -> np.ndarray:
    inputs = loaded.processor(
        audio=audio[0], text=[PROMPT], sampling_rate=RATE, padding=True, return_tensors="pt"
    )
    kwargs = params.generate_kwargs(loaded.frame_rate, loaded.model.decoder.num_codebooks)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(params.seed)
        # kwargs: do_sample=True, ...
        return loaded.model.generate(**inputs, **kwargs, **extra).numpy()


@pytest.mark.parametrize(
    "guidance_scale, top_k, prompt_seconds", [(3.0, 50, 0.3), (1.0, 250, 0.31), (2.0, 0, 0.02)]
)
def test_fp32_continuation_equals_transformers_generate(
    tiny_loaded, guidance_scale, top_k, prompt_seconds
):
    audio = _tone(prompt_seconds)
    params = GenerationParams(duration=0.4, guidance_scale=guidance_scale, top_k=top_k, seed=7)
    engine = GenerationEngine(tiny_loaded, precision="fp32")
    (ours_ids, ours_stop), (theirs_ids, theirs_stop) = recorder(), recorder()
    ours = engine.generate([PROMPT], params, audio_prompt=audio, stopping_criteria=ours_stop)
    theirs = _transformers(tiny_loaded, audio, params, stopping_criteria=theirs_stop)
    frames = -(-audio.shape[-1] // HOP)  # the prompt's codec frames, rounded up
    # The prompt (re-synthesised from its codes), then 0.4 s = 20 frames of continuation.
    assert ours.shape == theirs.shape == (1, 1, (frames + 20) * HOP)
    assert ours_ids.ids.shape == theirs_ids.ids.shape
    assert_same_generation(ours, theirs, ours_ids.ids, theirs_ids.ids)


def test_prompt_codes_are_forced_and_rows_with_prompts_join_a_batch(tiny_loaded):
    engine = GenerationEngine(tiny_loaded, precision="fp32")
    params = GenerationParams(duration=0.2, guidance_scale=3.0, top_k=50)
    audio = _tone(0.2, 330.0)
    codes = engine.prompt_codes(audio)
    assert codes.shape == (4, 10) and codes.dtype == torch.long

    def alone(**kw):
        loop = engine.new_loop()
        row = engine.add(loop, PROMPT, params, seed=3, **kw)
        while loop.rows:
            loop.step()
        return row

    single = alone(audio_prompt=audio)
    assert single.forced == 10 and single.step == 10 + params_steps(engine, params)
    np.testing.assert_array_equal(single.codes()[:, :10], codes)  # the prompt, untouched
    assert single.codes().shape == (4, 10 + 10)

    # In a running batch with a plain row (different lengths, positions and prefill), each row
    # gives what it gives alone.
    loop = engine.new_loop()
    plain = engine.add(loop, "rock", params, seed=4)
    loop.step()
    loop.step()
    prompted = engine.add(loop, PROMPT, params, seed=3, audio_prompt=audio)
    while loop.rows:
        loop.step()
    assert torch.equal(prompted.delayed_ids(), single.delayed_ids())
    loop = engine.new_loop()
    plain_alone = engine.add(loop, "rock", params, seed=4)
    while loop.rows:
        loop.step()
    assert torch.equal(plain.delayed_ids(), plain_alone.delayed_ids())


def params_steps(engine, params) -> int:
    return engine.sampling(params).max_new_tokens


def test_bad_audio_prompts_are_one_clear_line(tiny_loaded):
    engine = GenerationEngine(tiny_loaded, precision="fp32", window_seconds=1.0)
    with pytest.raises(GenerationInputError, match=r"float audio \[1, samples\]"):
        engine.generate(["x"], GenerationParams(duration=0.2), audio_prompt=np.zeros((2, 100)))
    with pytest.raises(GenerationInputError, match="shorter than the model's window of 1 s"):
        engine.generate(["x"], GenerationParams(duration=0.2), audio_prompt=_tone(1.2))


def test_generate_command_continues_a_file(tmp_path, capsys):
    start = tmp_path / "start.wav"
    stereo = np.repeat(_tone(0.5 * 44_100 / RATE), 2, axis=0)  # 0.5 s at 44.1 kHz, stereo
    write_audio(start, stereo, 44_100)  # converted to the model's mono 32 kHz
    out = tmp_path / "more.wav"
    args = ["generate", "model=tiny", "prompt=x", "duration=0.2", "seed=1"]
    assert main([*args, f"audio_prompt={start}", f"output={out}"]) == 0
    audio, rate = sf.read(out)
    assert rate == RATE and len(audio) == (25 + 10) * HOP  # 0.5 s = 25 frames, then 0.2 s
    capsys.readouterr()

    code = main([*args, f"audio_prompt={tmp_path / 'missing.wav'}", f"output={out}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "audio_prompt=" in err[0] and "no such file" in err[0]

    long = tmp_path / "long.wav"
    write_audio(long, _tone(1.5), RATE)
    code = main(
        [
            *args,
            f"audio_prompt={long}",
            "generation.window_seconds=1.0",
            "generation.extend_stride=0.5",
            f"output={out}",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "shorter than the model's window" in err[0]


def test_stereo_continuation_equals_transformers_generate():
    """Stereo: each channel encoded apart, the codebooks interleaved, as generate does."""
    from musicgen_train.sources import load_musicgen

    loaded = load_musicgen("tiny-stereo")
    t = np.arange(9600) / RATE
    audio = np.stack([0.3 * np.sin(2 * np.pi * 220 * t), 0.2 * np.sin(2 * np.pi * 330 * t)])
    audio = audio.astype(np.float32)
    params = GenerationParams(duration=0.3, seed=7, guidance_scale=3.0, top_k=50)
    engine = GenerationEngine(loaded, precision="fp32")
    (ours_ids, ours_stop), (theirs_ids, theirs_stop) = recorder(), recorder()
    ours = engine.generate([PROMPT], params, audio_prompt=audio, stopping_criteria=ours_stop)
    inputs = loaded.processor(
        audio=audio, text=[PROMPT], sampling_rate=RATE, padding=True, return_tensors="pt"
    )
    kwargs = params.generate_kwargs(loaded.frame_rate, loaded.model.decoder.num_codebooks)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        theirs = loaded.model.generate(**inputs, **kwargs, stopping_criteria=theirs_stop).numpy()
    # generate's max_new_tokens counts mono's delay (K - 1 steps), more than stereo's K/2 - 1,
    # so it makes a few frames more; the frames asked for are the same samples.
    assert ours.shape == (1, 2, (15 + 15) * HOP)
    # the tokens of every step the engine made (generate makes a few more)
    assert_same_generation(
        ours,
        theirs[..., : ours.shape[-1]],
        ours_ids.ids,
        theirs_ids.ids[:, : ours_ids.ids.shape[-1]],
    )
