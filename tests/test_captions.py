"""Caption templates, field dropout, and tempo/key estimation on signals of known tempo and key."""

import random
import sys

import numpy as np
import pytest
from omegaconf import OmegaConf

from musicgen_train.data.captions import (
    DEFAULT_TEMPLATE,
    build_caption,
    estimate_tempo_key,
    key_from_chroma,
    validate_caption_config,
    with_estimated_tempo_key,
)
from musicgen_train.errors import ConfigError, UserError

FULL = {
    "description": "Warm lo-fi beat",
    "genre": "hip hop",
    "moods": ["chill", "nostalgic"],
    "instrument": "rhodes",
    "bpm": 84.6,
    "key": "F minor",
    "title": "ignored by the default template",
}
FULL_CAPTION = "Warm lo-fi beat. hip hop, chill, nostalgic, rhodes, 85 bpm, F minor"


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        (FULL, FULL_CAPTION),
        ({"genre": "jazz", "key": "C major"}, "jazz, C major"),
        ({"description": "Solo cello.", "bpm": 60}, "Solo cello. 60 bpm"),
        ({"description": "Drone", "key": "D minor"}, "Drone. D minor"),
        ({"bpm": "120"}, "120 bpm"),
        ({"bpm": "119.6", "key": ""}, "120 bpm"),
        ({"bpm": "fast", "key": "A minor"}, "fast bpm, A minor"),
        ({"moods": [], "genre": "  ", "bpm": float("nan"), "key": None}, "fallback"),
        ({}, "fallback"),
    ],
)
def test_default_template_leaves_no_dangling_separators(metadata, expected):
    caption_cfg = {"template": DEFAULT_TEMPLATE, "default": "fallback"}
    assert build_caption(metadata, caption_cfg) == expected


@pytest.mark.parametrize(
    ("template", "metadata", "expected"),
    [
        ("A {genre} track, {bpm} bpm, in {key}.", {"genre": "rock", "key": "E minor"},
         "A rock track, in E minor."),
        ("A {genre} track, {bpm} bpm, in {key}.", {"bpm": 90}, "90 bpm."),
        ("{genre} with {instrument}", {"genre": "folk", "instrument": "banjo"}, "folk with banjo"),
        ("{genre} with {instrument}", {"genre": "folk"}, "folk"),
        ("{genre} track with {instrument}, {bpm} bpm", {"genre": "rock", "bpm": 90},
         "rock track, 90 bpm"),
        ("{genre} track with {instrument}, {bpm} bpm", {"instrument": "oud", "bpm": 90},
         "with oud, 90 bpm"),
        ("{title} by {artist}", {"title": "Song", "artist": "Band"}, "Song by Band"),
        ("{bpm:.1f} bpm | {key}", {"bpm": 97, "key": "G major"}, "97.0 bpm | G major"),
        ("{keywords}; {description}", {"keywords": "a, b", "description": "c"}, "a, b; c"),
        ("jazz", FULL, "jazz"),  # a template without fields is a fixed caption
    ],
)  # fmt: skip
def test_templates_keep_words_with_their_field(template, metadata, expected):
    assert build_caption(metadata, {"template": template}) == expected


def test_fields_list_replaces_the_template():
    caption_cfg = {"template": "{title}", "fields": ["key", "bpm", "genre"]}
    assert build_caption(FULL, caption_cfg) == "F minor, 85 bpm, hip hop"


def test_field_dropout_drops_each_field_with_the_configured_probability():
    caption_cfg = {"template": "{genre}, {moods}, {instrument}, {bpm} bpm, {key}",
                   "field_dropout": 0.3}  # fmt: skip
    metadata = {"genre": "g", "moods": "m", "instrument": "i", "bpm": 1, "key": "k"}
    rng = np.random.default_rng(0)
    draws = [build_caption(metadata, caption_cfg, rng).split(", ") for _ in range(4000)]
    for piece in ("g", "m", "i", "1 bpm", "k"):
        kept = np.mean([piece in parts for parts in draws])
        # binomial standard error at n=4000 is 0.007; the keep-one rule adds 0.3**5/5 = 0.0005
        assert kept == pytest.approx(0.7, abs=0.025), piece
    assert all(parts and all(parts) for parts in draws)  # never empty, no empty pieces
    sizes = np.bincount([len(parts) for parts in draws], minlength=6)
    assert sizes[5] / 4000 == pytest.approx(0.7**5, abs=0.025)
    # the field order of the template is kept
    order = ["g", "m", "i", "1 bpm", "k"]
    assert all(parts == sorted(parts, key=order.index) for parts in draws)
    # no rng: no dropout; p=1: exactly one field, chosen at random; same seed, same captions
    assert build_caption(metadata, caption_cfg) == "g, m, i, 1 bpm, k"
    one = [build_caption(metadata, {**caption_cfg, "field_dropout": 1.0}, rng) for _ in range(500)]
    assert all(", " not in c for c in one) and len(set(one)) == 5
    first = [build_caption(metadata, caption_cfg, random.Random(7)) for _ in range(3)]
    assert first == [build_caption(metadata, caption_cfg, random.Random(7)) for _ in range(3)]


def test_a_single_field_is_never_dropped():
    caption_cfg = {"field_dropout": 0.9}
    rng = np.random.default_rng(1)
    assert {build_caption({"genre": "jazz"}, caption_cfg, rng) for _ in range(50)} == {"jazz"}


def test_key_from_chroma_recovers_every_key_from_its_own_profile():
    from musicgen_train.data.captions import _MAJOR_PROFILE, _MINOR_PROFILE, _PITCHES

    for tonic, name in enumerate(_PITCHES):
        assert key_from_chroma(np.roll(_MAJOR_PROFILE, tonic)) == f"{name} major"
        assert key_from_chroma(np.roll(_MINOR_PROFILE, tonic)) == f"{name} minor"
    assert key_from_chroma(np.ones(12)) is None


def _click_melody(bpm: float, scale_midi: list[int], seconds: float = 12.0, rate: int = 22050):
    """Plucked notes on every beat walking through a scale, with a click on each beat."""
    out = np.zeros(int(seconds * rate))
    beat = 60.0 / bpm
    t = np.arange(int(beat * rate)) / rate
    for i, start in enumerate(np.arange(0, seconds - beat, beat)):
        freq = 440.0 * 2 ** ((scale_midi[i % len(scale_midi)] - 69) / 12)
        note = np.sin(2 * np.pi * freq * t) * np.exp(-t * 4)
        note[:40] += np.linspace(1, 0, 40)  # the click that marks the beat
        begin = int(start * rate)
        out[begin : begin + len(note)] += note
    return out.astype(np.float32), rate


def test_estimate_tempo_and_key_of_signals_with_known_tempo_and_key():
    pytest.importorskip("librosa")
    # E minor: the tonic triad stressed, then the rest of the natural minor scale
    e_minor = [64, 67, 71, 64, 66, 67, 69, 71, 72, 74, 76, 71, 67, 64]
    audio, rate = _click_melody(120, e_minor)
    found = estimate_tempo_key(audio[None], rate)
    assert found["key"] == "E minor"
    assert found["bpm"] == pytest.approx(120, abs=3)
    d_major = [62, 66, 69, 62, 64, 66, 67, 69, 71, 73, 74, 69, 66, 62]
    audio, rate = _click_melody(90, d_major)
    stereo = np.stack([audio, audio])  # [channels, samples] at another rate
    found = estimate_tempo_key(stereo, rate)
    assert found["key"] == "D major" and found["bpm"] == pytest.approx(90, abs=3)
    assert estimate_tempo_key(np.zeros((1, 44100)), 44100) == {"bpm": None, "key": None}


def test_estimation_fills_only_missing_fields_and_only_when_asked():
    pytest.importorskip("librosa")
    audio, rate = _click_melody(120, [64, 67, 71, 64, 66, 67, 69, 71, 72, 74, 76, 71, 67, 64])
    metadata = {"genre": "test", "bpm": 100}
    filled = with_estimated_tempo_key(metadata, audio, rate, {"estimate_tempo_key": True})
    assert filled == {"genre": "test", "bpm": 100, "key": "E minor"}
    assert metadata == {"genre": "test", "bpm": 100}  # the caller's dict is left alone
    off = with_estimated_tempo_key(metadata, audio, rate, {"estimate_tempo_key": False})
    assert off == metadata


def test_missing_librosa_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "librosa", None)  # makes `import librosa` fail
    with pytest.raises(UserError, match=r"needs librosa: pip install 'musicgen-train\[analysis\]'"):
        estimate_tempo_key(np.zeros((1, 32000)), 32000)
    # not asked, not needed
    assert with_estimated_tempo_key({}, np.zeros((1, 10)), 16000, {}) == {}


@pytest.mark.parametrize(
    ("caption", "message"),
    [
        ({"template": "{genre"}, "is not a valid template"),
        ({"template": "{0} music"}, "is not a metadata field name"),
        ({"template": None}, "give a string"),
        ({"fields": ["genre", "two words"]}, "data.caption.fields"),
        ({"fields": "genre"}, "data.caption.fields"),
        ({"field_dropout": 1.5}, "data.caption.field_dropout=1.5"),
        ({"estimate_tempo_key": "yes"}, "estimate_tempo_key='yes'"),
    ],
)
def test_caption_config_checks_name_key_and_value(caption, message):
    cfg = OmegaConf.create({"data": {"caption": {"template": DEFAULT_TEMPLATE, **caption}}})
    with pytest.raises(ConfigError, match=message):
        validate_caption_config(cfg)


def test_shipped_data_configs_pass_the_checks():
    from musicgen_train.config import configs_dir
    from musicgen_train.data.sources import validate_source_config

    for name in ("demo", "folder", "manifest", "hf"):
        cfg = OmegaConf.create({"data": OmegaConf.load(configs_dir() / "data" / f"{name}.yaml")})
        validate_source_config(cfg)
        validate_caption_config(cfg)
        assert build_caption(FULL, cfg.data.caption) == FULL_CAPTION
        cfg.data.caption.fields = ["genre", "bpm"]
        validate_caption_config(cfg)
        assert build_caption(FULL, cfg.data.caption) == "hip hop, 85 bpm"
