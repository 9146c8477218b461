"""audiocraft's protocol options (cut, BS.1770 loudness) and the package-dependent metrics."""

import numpy as np
import pytest
import torch
from evaluation_models import tone
from omegaconf import OmegaConf

from musicgen_train.audio import read_audio, write_audio
from musicgen_train.evaluation.clips import Clip
from musicgen_train.evaluation.optional_metrics import (
    AES_METRICS,
    AestheticsScorer,
    MetricUnavailable,
    PasstClassifier,
    aesthetics_entries,
    kl_divergence,
    kld_entry,
)
from musicgen_train.evaluation.protocol import (
    apply_protocol,
    integrated_loudness,
    normalise_loudness,
)

BOOT = OmegaConf.create({"samples": 50, "confidence": 0.95, "seed": 0})


def test_bs1770_loudness_of_a_full_scale_997hz_sine():
    # BS.1770's calibration: a 0 dBFS 997 Hz sine on one channel reads -3.01 LUFS.
    sine = tone(5.0, 48_000, 997.0, amplitude=1.0)
    assert integrated_loudness(sine, 48_000) == pytest.approx(-3.01, abs=0.05)


def test_normalise_loudness_hits_the_target_and_leaves_silence_alone():
    audio = tone(3.0, 32_000, 440.0, amplitude=0.05)
    louder = normalise_loudness(audio, 32_000, -14.0)
    assert integrated_loudness(louder, 32_000) == pytest.approx(-14.0, abs=0.05)
    # Pure gain: the ratio of samples is constant (no clipping at this level).
    ratio = louder[0, 1000] / audio[0, 1000]
    np.testing.assert_allclose(louder, audio * ratio, rtol=1e-5, atol=1e-7)
    silent = np.zeros((1, 32_000), dtype=np.float32)
    np.testing.assert_array_equal(normalise_loudness(silent, 32_000), silent)
    short = tone(0.2, 32_000)
    np.testing.assert_array_equal(normalise_loudness(short, 32_000), short)


def test_protocol_cuts_to_the_prompt_reference_and_normalises(tmp_path):
    generated = write_audio(tmp_path / "gen.wav", tone(4.0, 32_000, amplitude=0.05), 32_000)
    second = write_audio(tmp_path / "gen2.wav", tone(4.0, 32_000, amplitude=0.05), 32_000)
    reference = write_audio(tmp_path / "ref.wav", tone(2.5, 16_000), 16_000)
    settings = {"cut_to_reference": True, "cut_seconds": None, "loudness_lufs": -14.0}
    ((clip,), (other,)) = apply_protocol(
        [[Clip(generated, name="a")], [Clip(second, name="b")]],
        [reference, None],
        settings,
        tmp_path / "protocol",
    )
    audio, rate = read_audio(clip.path)
    assert rate == 32_000 and audio.shape[-1] == 80_000  # 2.5 s, the reference's length
    assert integrated_loudness(audio, rate) == pytest.approx(-14.0, abs=0.1)
    assert read_audio(other.path)[0].shape[-1] == 128_000  # no reference: not cut
    same = [[Clip(generated)]]
    assert apply_protocol(same, [None], {"loudness_lufs": None}, tmp_path) is same


def test_kl_divergence_matches_the_formula():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(6), size=3)
    q = rng.dirichlet(np.ones(6), size=3)
    q[0, 2] = 0.0
    q[0] /= q[0].sum()
    expected = [
        sum(q[i, c] * (np.log(q[i, c]) - np.log(p[i, c] + 1e-6)) for c in range(6) if q[i, c] > 0)
        for i in range(3)
    ]
    np.testing.assert_allclose(kl_divergence(p, q), expected, rtol=1e-12)
    # torch's kl_div, as audiocraft calls it.
    torch_value = torch.nn.functional.kl_div(
        torch.log(torch.tensor(p) + 1e-6), torch.tensor(q), reduction="none"
    ).sum(-1)
    np.testing.assert_allclose(kl_divergence(p, q), torch_value.numpy(), rtol=1e-10)


class FakePasst(torch.nn.Module):
    """Stands in for hear21passt's model: logits from the segment's energy in 4 bands."""

    def forward(self, wave):
        spectrum = torch.fft.rfft(wave).abs()
        bands = torch.stack([b.mean(-1) for b in spectrum.chunk(4, dim=-1)], dim=-1)
        return torch.log(bands + 1e-3)


def test_kld_pairs_each_generation_with_its_prompt_reference(tmp_path):
    ref = write_audio(tmp_path / "ref.wav", tone(12.0, 32_000, 440.0), 32_000)
    gen_same = write_audio(tmp_path / "same.wav", tone(12.0, 32_000, 440.0), 32_000)
    gen_other = write_audio(tmp_path / "other.wav", tone(12.0, 32_000, 9000.0), 32_000)
    classifier = PasstClassifier(FakePasst())
    # Two segments (10 s + 2 s): the softmax averaged over them, by hand.
    wave = read_audio(ref)[0][0]
    by_hand = np.mean(
        [
            torch.softmax(FakePasst()(torch.from_numpy(w[None])), -1)[0].numpy()
            for w in (wave[:320_000], wave[320_000:])
        ],
        axis=0,
    )
    np.testing.assert_allclose(classifier.distribution(*Clip(ref).load()), by_hand, rtol=1e-5)
    entry = kld_entry(classifier, [[Clip(gen_same)], [Clip(gen_other)]], [ref, ref], boot=BOOT)
    assert entry["clips"] == 2 and entry["value"] > 0
    with pytest.raises(MetricUnavailable, match="reference"):
        kld_entry(classifier, [[Clip(gen_same)]], [None], boot=BOOT)


def test_missing_packages_are_one_line_each():
    import importlib.util

    if importlib.util.find_spec("hear21passt") is None:
        with pytest.raises(MetricUnavailable, match="hear21passt is not installed"):
            PasstClassifier.load()
    if importlib.util.find_spec("audiobox_aesthetics") is None:
        with pytest.raises(MetricUnavailable, match="audiobox-aesthetics is not installed"):
            AestheticsScorer.load({})


def test_aesthetics_means_over_generations(tmp_path):
    class Predictor:
        def forward(self, batch):
            (item,) = batch
            level = float(item["path"].abs().max())
            return [{"CE": 10 * level, "CU": 5.0, "PC": level, "PQ": 2 * level}]

    clips = [
        [Clip(write_audio(tmp_path / f"{a}.wav", tone(1.0, 16_000, amplitude=a), 16_000))]
        for a in (0.25, 0.5)
    ]
    entries = aesthetics_entries(AestheticsScorer(Predictor(), "fake"), clips, boot=BOOT)
    assert list(entries) == AES_METRICS
    assert entries["aes_ce"]["value"] == pytest.approx(3.75, rel=1e-3)
    assert entries["aes_cu"]["value"] == 5.0 and entries["aes_pq"]["clips"] == 2
