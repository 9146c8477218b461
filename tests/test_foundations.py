"""The pieces every stage stands on: tiny model, loader, config composition, CLI, generation."""

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from musicgen_train.audio import (
    encode_audio_bytes,
    load_audio,
    read_audio,
    resample,
    to_channels,
    write_audio,
)
from musicgen_train.cli import main
from musicgen_train.config import load_config, split_overrides
from musicgen_train.errors import ConfigError
from musicgen_train.generation import GenerationEngine, GenerationParams
from musicgen_train.model import ModelNotFoundError
from musicgen_train.model.tiny import build_tiny_model, ensure_tiny_model
from musicgen_train.sources import load_musicgen


def test_tiny_model_is_deterministic_and_has_musicgen_token_layout(tmp_path):
    a, b, c = build_tiny_model(seed=1), build_tiny_model(seed=1), build_tiny_model(seed=2)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa, pb), name
    pairs = zip(a.parameters(), c.parameters(), strict=True)
    assert any(not torch.equal(pa, pc) for pa, pc in pairs)
    assert a.config.decoder.num_codebooks == 4
    assert a.config.decoder.pad_token_id == a.config.decoder.vocab_size == 64
    assert a.config.audio_encoder.sampling_rate == 32_000
    assert a.config.audio_encoder.frame_rate == 50


def test_tiny_model_loads_through_from_pretrained(tiny_model_dir, tiny_loaded):
    assert (tiny_model_dir / "config.json").exists()
    assert (tiny_model_dir / "model.safetensors").exists()
    assert ensure_tiny_model(seed=0) == tiny_model_dir  # built once, then reused
    reference = build_tiny_model(seed=0)
    loaded = dict(tiny_loaded.model.named_parameters())
    for name, param in reference.named_parameters():
        assert torch.equal(loaded[name], param), name
    codes = tiny_loaded.model.audio_encoder.encode(torch.zeros(1, 1, 32_000)).audio_codes
    assert codes.shape == (1, 1, 4, 50)  # 4 codebooks at 50 frames per second
    assert int(codes.max()) < 64


def test_missing_hub_checkpoint_gives_one_clear_line():
    with pytest.raises(ModelNotFoundError) as info:
        load_musicgen("facebook/musicgen-small")
    message = str(info.value)
    assert "\n" not in message
    assert "facebook/musicgen-small" in message and "HF_HUB_OFFLINE" in message


def test_bad_local_paths_are_named(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_musicgen(str(tmp_path / "nope"))
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load_musicgen(str(tmp_path))


def test_cli_reports_missing_checkpoint_as_one_line(capsys):
    code = main(["evaluate", "model=facebook/musicgen-large"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "facebook/musicgen-large" in err[0]


def test_config_composes_recipe_and_overrides():
    cfg = load_config(["seed=7", "model=musicgen-small"])
    assert cfg.seed == 7
    assert cfg.model.id == "facebook/musicgen-small"
    custom = load_config(["model=some/local-model"])
    assert custom.model.name == "custom" and custom.model.id == "some/local-model"
    assert OmegaConf.select(cfg, "recipe") == "demo"
    served = load_config(["host=0.0.0.0", "port=9123"])
    assert (served.serve.host, served.serve.port) == ("0.0.0.0", 9123)


def test_config_errors_name_key_and_choices():
    with pytest.raises(ConfigError, match="recipe='nope'.*demo"):
        load_config(["recipe=nope"])
    with pytest.raises(ConfigError, match="optim/nope"):
        load_config(["optim=nope"])
    with pytest.raises(ConfigError, match="not key=value"):
        split_overrides(["seed"])


def test_cli_usage_and_unknown_stage(capsys):
    assert main(["--help"]) == 0
    assert "prepare" in capsys.readouterr().out
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
    assert "unknown stage 'frobnicate'" in capsys.readouterr().err


def test_generation_is_seeded_and_has_the_requested_length(tiny_loaded):
    engine = GenerationEngine(tiny_loaded)
    params = GenerationParams(duration=0.5, seed=3, top_k=10)
    first = engine.generate(["a calm pad", "fast drums"], params)
    again = engine.generate(["a calm pad", "fast drums"], params)
    other = engine.generate(["a calm pad", "fast drums"], GenerationParams(duration=0.5, seed=4))
    assert first.shape == (2, 1, 16_000)
    assert first.dtype == np.float32
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_generation_params_kwargs():
    kwargs = GenerationParams(duration=2.0, guidance_scale=1.0, top_p=0.9).generate_kwargs(50, 4)
    assert kwargs["max_new_tokens"] == 100 + 3
    assert kwargs["guidance_scale"] is None and kwargs["top_p"] == 0.9
    assert GenerationParams(seed=1).batch_key() == GenerationParams(seed=2).batch_key()


def test_audio_roundtrip_resample_and_channels(tmp_path):
    t = np.arange(44_100) / 44_100
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 220 * t)]).astype("f4") * 0.5
    path = write_audio(tmp_path / "x.flac", stereo, 44_100)
    audio, rate = read_audio(path)
    assert rate == 44_100 and audio.shape == (2, 44_100)
    np.testing.assert_allclose(audio, stereo, atol=1e-4)  # 16-bit quantisation
    mono = load_audio(path, 32_000, channels=1)
    assert mono.shape == (1, 32_000)
    # A 440 Hz tone keeps its frequency through resampling: check the spectrum's peak.
    tone = resample(stereo[:1], 44_100, 16_000)[0]
    peak_hz = np.argmax(np.abs(np.fft.rfft(tone))) * 16_000 / len(tone)
    assert abs(peak_hz - 440) < 2
    assert to_channels(stereo[:1], 2).shape == (2, 44_100)
    np.testing.assert_allclose(to_channels(stereo, 1)[0], stereo.mean(axis=0))
    decoded, rate = read_audio(encode_audio_bytes(stereo, 44_100, "wav"))
    assert decoded.shape == (2, 44_100) and rate == 44_100


def test_real_checkpoint_shapes_for_benchmarks():
    from musicgen_train.model.shapes import encodec_32khz_config, musicgen_small_decoder_config

    codec = encodec_32khz_config()
    assert codec.frame_rate == 50 and codec.sampling_rate == 32_000
    # 4 codebooks of 2048 codes (11 bits) at 50 frames/s is MusicGen's 2.2 kbps.
    assert codec.target_bandwidths[0] * 1000 == 4 * 50 * 11
    decoder = musicgen_small_decoder_config()
    assert (decoder.hidden_size, decoder.num_hidden_layers, decoder.num_attention_heads) == (
        1024,
        24,
        16,
    )
    assert decoder.pad_token_id == decoder.vocab_size == 2048
