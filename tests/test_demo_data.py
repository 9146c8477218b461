"""The synthesized demo: files, captions, determinism, styles that simple formulas tell apart."""

import json

import numpy as np
import pytest

from musicgen_train.audio import audio_info, read_audio
from musicgen_train.data.demo import (
    CLIP_SECONDS,
    CLIPS_PER_STYLE,
    DEMO_STYLES,
    SAMPLE_RATE,
    ensure_demo_folder,
    synthesize_clip,
)
from musicgen_train.errors import UserError


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = ensure_demo_folder(tmp_path_factory.mktemp("demo") / "seed0", seed=0)
    rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()]
    return root, rows


def spectral_features(audio: np.ndarray, rate: int) -> tuple[float, float, np.ndarray]:
    """Spectral centroid (Hz), mean positive log-spectral flux, and the flux itself."""
    hop, size = 512, 2048
    frames = np.lib.stride_tricks.sliding_window_view(audio, size)[::hop] * np.hanning(size)
    spectrum = np.abs(np.fft.rfft(frames, axis=1))
    freqs = np.fft.rfftfreq(size, 1 / rate)
    centroid = float((spectrum * freqs).sum() / spectrum.sum())
    flux = np.maximum(np.diff(np.log1p(10 * spectrum), axis=0), 0).sum(axis=1)
    return centroid, float(flux.mean()), flux


def autocorrelation_tempo(flux: np.ndarray, rate: int, hop: int = 512) -> float:
    """The bpm (70-180) whose beat period best matches the onset flux with itself."""
    centred = flux - flux.mean()
    corr = np.correlate(centred, centred, "full")[len(centred) - 1 :]
    lags = np.arange(1, len(corr))
    bpm = 60 * rate / hop / lags
    usable = (bpm >= 70) & (bpm <= 180)
    return float(bpm[usable][np.argmax(corr[1:][usable])])


def test_the_folder_holds_every_clip_with_its_metadata(demo):
    root, rows = demo
    assert len(rows) == len(DEMO_STYLES) * CLIPS_PER_STYLE == 24
    assert len(DEMO_STYLES) >= 3 and len({s.name for s in DEMO_STYLES}) == len(DEMO_STYLES)
    for row in rows:
        duration, rate, channels = audio_info(root / row["file_name"])
        assert (rate, channels) == (SAMPLE_RATE, 1)
        assert duration == pytest.approx(CLIP_SECONDS, abs=1e-3)
        name, clip = row["file_name"].removesuffix(".wav").split("/")[1].split("_")
        style = next(s for s in DEMO_STYLES if s.name == name)
        assert {k: v for k, v in row.items() if k != "file_name"} == style.metadata(int(clip))
    total_minutes = len(rows) * CLIP_SECONDS / 60
    assert 2 <= total_minutes <= 6
    # within a style, clips differ in tempo and key, and the metadata says which
    for style in DEMO_STYLES:
        own = [r for r in rows if r["file_name"].startswith(style.name + "/")]
        assert len({r["bpm"] for r in own}) == CLIPS_PER_STYLE
        assert len({r["key"] for r in own}) == CLIPS_PER_STYLE
        assert all(r["key"].endswith(style.mode) for r in own)
    assert all(f"{style.metadata(0)['bpm']} bpm" in style.caption for style in DEMO_STYLES)


def test_clips_are_deterministic_from_the_seed_and_not_rewritten(demo, tmp_path):
    root, rows = demo
    style = DEMO_STYLES[1]
    again, metadata = synthesize_clip(style, 2, seed=0)
    stored, _ = read_audio(root / f"{style.name}/{style.name}_02.wav")
    assert metadata["bpm"] == rows[CLIPS_PER_STYLE + 2]["bpm"]
    assert np.max(np.abs(again - stored)) < 1.0 / 2**14  # only the 16-bit rounding differs
    other, _ = synthesize_clip(style, 2, seed=1)
    assert np.max(np.abs(other - again)) > 0.01
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*.wav")}
    assert ensure_demo_folder(root, seed=0) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.wav")} == stamps


def test_a_stale_demo_is_rewritten_and_a_foreign_folder_refused(tmp_path):
    root = tmp_path / "demo"
    root.mkdir()
    (root / "demo_info.json").write_text('{"version": 0}')  # an older demo of ours
    (root / "leftover.txt").write_text("old")
    ensure_demo_folder(root, seed=3)
    assert not (root / "leftover.txt").exists()
    assert json.loads((root / "demo_info.json").read_text())["seed"] == 3
    assert len(list(root.rglob("*.wav"))) == 24
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "song.wav").write_bytes(b"precious")
    with pytest.raises(UserError, match="holds other files"):
        ensure_demo_folder(foreign)
    assert (foreign / "song.wav").read_bytes() == b"precious"


def test_styles_are_told_apart_by_centroid_and_onset_strength(demo):
    """A nearest-centroid classifier on two simple features, leave-one-out: no mistakes."""
    root, rows = demo
    names, features = [], []
    for row in rows:
        audio, rate = read_audio(root / row["file_name"])
        centroid, strength, _flux = spectral_features(audio[0], rate)
        names.append(row["file_name"].split("/")[0])
        features.append([np.log(centroid), np.log(strength)])
    features = np.array(features)
    names = np.array(names)
    for i in range(len(rows)):
        rest = np.arange(len(rows)) != i
        means = {n: features[rest & (names == n)].mean(axis=0) for n in set(names)}
        guess = min(means, key=lambda n: np.linalg.norm(features[i] - means[n]))
        assert guess == names[i], rows[i]["file_name"]
    by_style = {n: features[names == n].mean(axis=0) for n in set(names)}
    assert by_style["ambient"][1] < by_style["piano"][1] < by_style["blues"][1]  # onsets
    assert by_style["techno"][0] == max(f[0] for f in by_style.values())  # hi-hats: brightest


def test_rhythmic_styles_play_at_the_tempo_their_caption_says(demo):
    root, rows = demo
    for row in rows:
        if row["genre"] == "ambient":
            continue  # no beat to measure: slow swelling chords
        audio, rate = read_audio(root / row["file_name"])
        tempo = autocorrelation_tempo(spectral_features(audio[0], rate)[2], rate)
        candidates = (row["bpm"], row["bpm"] * 2 / 3, row["bpm"] * 2, row["bpm"] / 2)
        assert min(abs(tempo / c - 1) for c in candidates) < 0.04, (row["file_name"], tempo)


def test_each_style_is_in_the_key_its_caption_says(demo):
    pytest.importorskip("librosa")
    from musicgen_train.data.captions import estimate_tempo_key

    root, rows = demo
    hits = 0
    for index in range(len(DEMO_STYLES)):  # one clip per style, each in another key
        row = rows[index * CLIPS_PER_STYLE + index]
        audio, rate = read_audio(root / row["file_name"])
        hits += estimate_tempo_key(audio, rate)["key"] == row["key"]
    assert hits >= len(DEMO_STYLES) - 1


def test_the_demo_prompt_set_asks_for_the_demo_styles():
    from pathlib import Path

    prompts = Path(__file__).resolve().parent.parent / "evaluation" / "demo" / "prompts.jsonl"
    rows = [json.loads(line) for line in prompts.read_text().splitlines() if line.strip()]
    assert {row["id"]: row["text"] for row in rows} == {s.name: s.caption for s in DEMO_STYLES}
