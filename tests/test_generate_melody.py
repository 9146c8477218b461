"""``musicgen-train generate melody=ref.wav`` on a melody model, through the one engine."""

from __future__ import annotations

import numpy as np
import soundfile as sf
import torch
from evaluation_models import tone

from musicgen_train.audio import write_audio
from musicgen_train.cli import main
from musicgen_train.generation import GenerationEngine, GenerationParams
from musicgen_train.generation.melody import melody_conditioning
from musicgen_train.sources import load_musicgen


def test_generate_with_a_melody_reference(tmp_path, capsys):
    reference = tmp_path / "ref.wav"
    write_audio(reference, tone(2.0, 32_000, 261.6), 32_000)
    out = tmp_path / "clip.wav"
    args = ["generate", "model=tiny-melody", "prompt=a calm hum", "duration=0.3", "seed=1"]
    assert main([*args, f"melody={reference}", f"output={out}"]) == 0
    audio, rate = sf.read(out)
    assert rate == 32_000 and len(audio) == int(round(0.3 * 32_000))

    # The engine's melody path is transformers' generate with the chroma, seeded per row.
    loaded = load_musicgen("tiny-melody")
    engine = GenerationEngine(loaded, precision="fp32")
    params = GenerationParams(duration=0.3, seed=5, top_k=20)
    extra = melody_conditioning(loaded, str(reference), 1)
    ours = engine.generate(["a calm hum"], params, **extra)
    inputs = loaded.processor(text=["a calm hum"], padding=True, return_tensors="pt")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        kwargs = params.generate_kwargs(
            loaded.frame_rate, loaded.model.config.decoder.num_codebooks
        )
        theirs = loaded.model.generate(**inputs, **extra, **kwargs).float().numpy()
    np.testing.assert_array_equal(ours, theirs[..., : ours.shape[-1]])


def test_a_melody_for_a_text_model_is_one_line(tmp_path, capsys):
    reference = tmp_path / "ref.wav"
    write_audio(reference, tone(1.0, 32_000), 32_000)
    code = main(["generate", "model=tiny", "prompt=x", "duration=0.2", f"melody={reference}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "conditioned on text only" in err[0]
