"""Embedding as fadtk does wherever a score is compared with fadtk's statistics (issue 15)."""

import numpy as np
import pytest
import torch
from evaluation_models import save_tiny_clap
from omegaconf import OmegaConf

from musicgen_train.evaluation.cache import EmbeddingCache
from musicgen_train.evaluation.clap import fadtk_windows
from musicgen_train.evaluation.embedders import build_embedder
from musicgen_train.evaluation.frechet import Statistics, save_statistics
from musicgen_train.evaluation.reference import Reference, ReferenceUnavailable


def fadtk_clap_chunks(audio, sr=48_000):
    """fadtk 1.1.0's CLAP windowing, re-written: int16 round trip of the whole clip, a 10 s
    window from every 1 s offset up to the end, each shorter one zero-padded to 10 s."""
    x = np.clip(audio, -1.0, 1.0)
    x = np.array([int(v * 32767.0) for v in x], dtype=np.float64)  # int() truncates toward 0
    x = (x / 32767.0).astype(np.float32)
    chunks, offset = [], 0
    while offset < len(x):
        chunk = list(x[offset : offset + 10 * sr])
        chunk += [0.0] * (10 * sr - len(chunk))
        chunks.append(np.array(chunk, dtype=np.float32))
        offset += sr
    return chunks


def cfg(**overrides):
    base = {
        "clap": {"checkpoint": None, "window_seconds": 10.0, "min_last_seconds": 1.0},
        "encodec": {"checkpoint": "model"},
    }
    return OmegaConf.merge(OmegaConf.create(base), OmegaConf.create(overrides))


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory):
    return save_tiny_clap(tmp_path_factory.mktemp("clap"))


def test_fadtk_windows_match_a_reimplementation_on_synthetic_audio():
    rng = np.random.default_rng(0)
    audio = (rng.normal(scale=0.6, size=int(48_000 * 12.5))).astype(np.float32)  # some clip
    ours = fadtk_windows(audio, 480_000, 48_000)
    expected = fadtk_clap_chunks(audio)
    assert len(ours) == len(expected) == 13  # offsets 0, 1, ..., 12 s
    for a, b in zip(ours, expected, strict=True):
        np.testing.assert_array_equal(a, b)
    assert np.all(ours[-1][48_000 // 2 :] == 0)  # zero-padded, not repeated


def test_clap_fadtk_windowing_feeds_the_model_those_windows(clap_dir):
    embedder = build_embedder("clap", cfg(clap={"checkpoint": str(clap_dir), "windowing": "fadtk"}))
    seen = []
    original = embedder._features
    embedder._features = lambda windows: (seen.extend(windows), original(windows))[1]
    audio = np.random.default_rng(1).normal(scale=0.2, size=48_000 * 3).astype(np.float32)
    frames = embedder.embed(audio[None], 48_000)
    assert frames.shape == (3, 16) and len(seen) == 3
    for a, b in zip(seen, fadtk_clap_chunks(audio), strict=True):
        np.testing.assert_array_equal(a, b)
    assert embedder.fadtk_mismatch is None and "fadtk" in embedder.identity()["window"]


def test_clap_statistics_of_fadtk_are_refused_unless_embedded_as_fadtk(clap_dir, tmp_path):
    npz = save_statistics(
        tmp_path / "fma.npz", "clap-laion-music", Statistics(np.zeros(16), np.eye(16), 100)
    )
    reference = Reference("fadtk stats", stats_file=npz)
    cache = EmbeddingCache(None)
    consecutive = build_embedder("clap", cfg(clap={"checkpoint": str(clap_dir)}))
    with pytest.raises(ReferenceUnavailable) as err:
        reference.statistics(consecutive, cache)
    message = str(err.value)
    assert "\n" not in message and "set eval.clap.windowing=fadtk" in message
    fadtk = build_embedder("clap", cfg(clap={"checkpoint": str(clap_dir), "windowing": "fadtk"}))
    assert reference.statistics(fadtk, cache).count == 100


def test_encodec_chunks_are_not_loudness_normalised(tmp_path):
    from transformers import EncodecConfig, EncodecModel

    config = EncodecConfig(
        sampling_rate=8_000,
        audio_channels=2,
        hidden_size=16,
        num_filters=4,
        num_residual_layers=1,
        upsampling_ratios=[4, 2],
        num_lstm_layers=1,
        codebook_size=32,
        codebook_dim=16,
        target_bandwidths=[1.5],
        chunk_length_s=1.0,
        overlap=0.01,
        normalize=True,
    )
    torch.manual_seed(0)
    codec = EncodecModel(config).eval()
    from musicgen_train.evaluation.encodec_embedder import EncodecEmbedder

    embedder = EncodecEmbedder(codec, "tiny 8 kHz chunked")
    wave = np.random.default_rng(2).normal(scale=0.1, size=8_000 * 2 + 100).astype(np.float32)
    frames = embedder.embed(wave[None], 8_000)

    # By hand, as fadtk's encodec-emb-48k: segments of 8000 samples every 8000 (its stride is
    # segment_length, not the codec's 0.99 s chunk_stride), the short last one too, both
    # channels the mono signal, the encoder applied as is (no RMS scaling), concatenated.
    def by_hand(audio):
        with torch.no_grad():
            pieces = [codec.encoder(audio[..., s : s + 8000]) for s in range(0, 16_100, 8000)]
        return torch.cat(pieces, dim=-1)[0].T.numpy()

    np.testing.assert_allclose(
        frames, by_hand(torch.from_numpy(wave)[None, None].repeat(1, 2, 1)), rtol=1e-5, atol=1e-6
    )
    # A stereo clip stays stereo for a stereo codec (fadtk's convert_audio), not downmixed.
    right = np.random.default_rng(3).normal(scale=0.1, size=wave.size).astype(np.float32)
    stereo = np.stack([wave, right])
    np.testing.assert_allclose(
        embedder.embed(stereo, 8_000), by_hand(torch.from_numpy(stereo)[None]), rtol=1e-5, atol=1e-6
    )
    assert "consecutive 1 s chunks, no overlap" in embedder.window
    # Scaling the input scales the latents' input: without normalisation they differ.
    louder = embedder.embed(4 * wave[None], 8_000)
    assert not np.allclose(louder, frames, atol=1e-3)
    assert embedder.fadtk_mismatch is None and "not normalised" in embedder.window
    normalised = EncodecEmbedder(codec, "x", normalize_chunks=True)
    assert normalised.fadtk_mismatch and "normalize_chunks=false" in normalised.fadtk_mismatch
