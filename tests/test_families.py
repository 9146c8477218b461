"""The melody and stereo families: tiny models, the family table, stereo delay and decoding,
chroma features (issue 16)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import MusicgenForConditionalGeneration, MusicgenMelodyForConditionalGeneration

from musicgen_train.errors import ModelNotFoundError
from musicgen_train.model.chroma import ChromaExtractor, chroma_from_text, chroma_to_text
from musicgen_train.model.codec import decode_codes, load_codec, load_without_codec
from musicgen_train.model.delay import IGNORE_INDEX, delay_codes, delayed_labels, undelay_labels
from musicgen_train.model.families import family_of
from musicgen_train.model.tiny_families import ensure_tiny_family


@pytest.fixture(scope="module")
def stereo():
    from musicgen_train.sources import load_musicgen

    return load_musicgen("tiny-stereo")


@pytest.fixture(scope="module")
def melody():
    from musicgen_train.sources import load_musicgen

    return load_musicgen("tiny-melody")


def test_family_table_picks_the_class_from_config(stereo, melody, tiny_model_dir):
    assert type(stereo.model) is MusicgenForConditionalGeneration
    assert type(melody.model) is MusicgenMelodyForConditionalGeneration
    assert stereo.channels == 2 and melody.channels == 1
    assert stereo.model.config.decoder.num_codebooks == 8
    assert stereo.model.config.audio_encoder.audio_channels == 1  # mono codec, run per channel
    assert family_of(str(tiny_model_dir)).model_type == "musicgen"
    assert family_of(melody.path).melody and not family_of(stereo.path).melody
    assert melody.model.config.chroma_length == 235 and melody.model.config.num_chroma == 12
    # the folder carries transformers' melody feature-extractor settings
    settings = json.loads((Path(melody.path) / "preprocessor_config.json").read_text())
    assert settings["feature_extractor_type"] == "MusicgenMelodyFeatureExtractor"
    assert (settings["n_fft"], settings["hop_length"]) == (16384, 4096)


def test_codec_free_loading_keeps_the_family(melody, stereo):
    free = load_without_codec(melody.path)
    assert type(free.model) is MusicgenMelodyForConditionalGeneration
    assert free.processor.chroma == ChromaExtractor()
    codec = load_codec(stereo.path)
    assert codec.config.audio_channels == 1


def test_unknown_family_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelNotFoundError, match="'bert' model.*not a MusicGen family"):
        family_of(str(tmp_path))


def test_tiny_families_are_deterministic(tmp_path):
    a = ensure_tiny_family("tiny-stereo", seed=3, root=tmp_path / "a")
    b = ensure_tiny_family("tiny-stereo", seed=3, root=tmp_path / "b")
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()


def hand_delayed_stereo(codes: torch.Tensor, pad: int) -> torch.Tensor:
    """Independent formula: codebook k runs k // 2 frames late (left/right pairs together)."""
    batch, num_codebooks, frames = codes.shape
    steps = num_codebooks // 2
    out = torch.full((batch, num_codebooks, frames + steps - 1), pad)
    for k in range(num_codebooks):
        out[:, k, k // 2 : k // 2 + frames] = codes[:, k]
    return out


def test_stereo_delay_matches_formula_and_inverse(stereo):
    decoder = stereo.model.decoder
    codes = torch.randint(0, 64, (2, 8, 5), generator=torch.Generator().manual_seed(0))
    assert torch.equal(delay_codes(decoder, codes, 64), hand_delayed_stereo(codes, 64))
    labels = delayed_labels(decoder, codes)
    assert labels.shape == (2, 5 + 3, 8)
    assert ((labels == IGNORE_INDEX).sum(dim=1) == 3).all()  # 3 delay pads per codebook
    assert torch.equal(undelay_labels(labels, channels=2), codes)


def test_stereo_labels_equal_the_pattern_generate_uses(stereo):
    """generate's own delayed sequence and the codes it decodes: delaying those codes with our
    function gives generate's sequence back; its audio is [batch, 2, samples], each channel the
    decoding of its interleaved codebooks."""
    model, captured = stereo.model, {"codes": []}
    apply = model.decoder.apply_delay_pattern_mask

    def spy_apply(ids, mask):
        captured["delayed"] = out = apply(ids, mask)
        return out

    original = model.audio_encoder.decode

    def spy_decode(codes, *args, **kwargs):
        captured["codes"].append(codes)
        return original(codes, *args, **kwargs)

    frames = 6
    model.decoder.apply_delay_pattern_mask = spy_apply
    model.audio_encoder.decode = spy_decode
    try:
        torch.manual_seed(0)
        audio = model.generate(
            input_ids=torch.ones(2, 3, dtype=torch.long),
            do_sample=True,
            guidance_scale=None,
            max_new_tokens=frames + 3,
        )
    finally:
        del model.decoder.apply_delay_pattern_mask
        del model.audio_encoder.decode
    left, right = (c[0] for c in captured["codes"])  # [B, 4, T] each
    codes = torch.stack([left, right], dim=2).flatten(1, 2)  # interleaved [B, 8, T]
    generated = captured["delayed"].reshape(2, 8, -1)
    assert torch.equal(delay_codes(model.decoder, codes, 64), generated[:, :, 1 : frames + 4])
    assert audio.shape == (2, 2, frames * 640)
    ours = decode_codes(model.audio_encoder, codes, channels=2)
    assert torch.allclose(ours, audio, atol=1e-6)


def test_chroma_of_pure_tones():
    """A pure tone lands on its pitch class in every frame (C=0, ..., G=7, A=9)."""
    extractor = ChromaExtractor()
    t = np.arange(5 * 32000) / 32000
    for freq, pitch in ((261.63, 0), (392.0, 7), (440.0, 9), (493.88, 11)):
        chroma = extractor(np.sin(2 * np.pi * freq * t).astype(np.float32))
        assert chroma.shape == (1, 5 * 32000 // 4096 + 1, 12)
        assert (chroma.sum(-1) == 1).all()
        assert (chroma[0].argmax(-1) == pitch).all()
    assert extractor.frames(30 * 32000) == 235  # = musicgen-melody's chroma_length


def test_chroma_text_round_trip():
    index = torch.tensor([0, 9, 11, 3])
    onehot = torch.nn.functional.one_hot(index, 12).float()
    assert chroma_to_text(onehot) == "09b3"
    assert torch.equal(chroma_from_text("09b3"), onehot)


def test_chroma_matches_transformers_extractor_when_torchaudio_exists():
    pytest.importorskip("torchaudio")
    from transformers import MusicgenMelodyFeatureExtractor

    rng = np.random.default_rng(0)
    audio = rng.standard_normal(4 * 32000).astype(np.float32)
    theirs = MusicgenMelodyFeatureExtractor()(audio, sampling_rate=32000, return_tensors="pt")
    assert torch.equal(ChromaExtractor()(audio), theirs["input_features"])


def test_melody_processor_gives_text_and_chroma(melody):
    t = np.arange(2 * 32000) / 32000
    out = melody.processor(
        text=["a", "bb"], audio=np.sin(2 * np.pi * 440 * t), sampling_rate=32000, padding=True
    )
    assert out["input_ids"].shape[0] == 2 and out["attention_mask"].shape == out["input_ids"].shape
    assert out["input_features"].shape == (1, 16, 12)
    assert (out["input_features"][0].argmax(-1) == 9).all()
