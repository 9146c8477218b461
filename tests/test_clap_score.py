"""CLAP score: deterministic, and higher for the caption that matches the audio."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from evaluation_models import build_tiny_clap, tone
from omegaconf import OmegaConf

from musicgen_train.audio import write_audio
from musicgen_train.evaluation.cache import EmbeddingCache
from musicgen_train.evaluation.clap import ClapEmbedder
from musicgen_train.evaluation.clap_score import clap_score, clip_embedding, cosine_scores
from musicgen_train.evaluation.clips import Clip
from musicgen_train.evaluation.embedders import build_embedder

CAPTIONS = ["calm piano", "loud drums"]


def synthetic_pair_audio(rate: int = 48_000) -> list[np.ndarray]:
    """A soft low tone for "calm piano", loud noise bursts for "loud drums" (3 s each)."""
    calm = tone(3.0, rate, 220.0, amplitude=0.2)
    rng = np.random.default_rng(0)
    bursts = rng.normal(scale=0.6, size=(1, 3 * rate)).astype(np.float32)
    bursts *= (np.arange(3 * rate) % (rate // 4) < rate // 20).astype(np.float32)
    return [calm, np.clip(bursts, -1, 1)]


@pytest.fixture(scope="module")
def trained_clap_dir(tmp_path_factory):
    """A tiny CLAP whose projection heads learn two pairs contrastively, saved like a real one."""
    model, processor = build_tiny_clap(seed=0)
    embedder = ClapEmbedder(model, processor, "training")
    features = torch.cat(
        [embedder._features(embedder.windows(a[0])) for a in synthetic_pair_audio()]
    )
    tokens = processor.tokenizer(CAPTIONS, padding=True, return_tensors="pt")
    with torch.no_grad():  # the encoders stay as they are: only the projections learn
        audio = model.audio_model(
            input_features=features, is_longer=torch.zeros(2, 1, dtype=torch.bool)
        ).pooler_output
        text = model.text_model(**tokens).pooler_output
    heads = [*model.audio_projection.parameters(), *model.text_projection.parameters()]
    optimizer = torch.optim.Adam(heads, lr=1e-2)
    targets = torch.arange(2)
    for _ in range(500):  # the pooled outputs of a random encoder are nearly parallel
        a = F.normalize(model.audio_projection(audio), dim=-1)
        t = F.normalize(model.text_projection(text), dim=-1)
        logits = 10 * t @ a.T
        loss = F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    folder = tmp_path_factory.mktemp("clap-trained")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pair_clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs")
    return [
        Clip(write_audio(folder / f"{i}.wav", audio, 48_000), name=str(i))
        for i, audio in enumerate(synthetic_pair_audio())
    ]


def load(folder):
    cfg = OmegaConf.create({"clap": {"checkpoint": str(folder), "window_seconds": 10.0}})
    return build_embedder("clap", cfg)


def test_matching_caption_scores_higher_than_a_mismatched_one(trained_clap_dir, pair_clips):
    embedder = load(trained_clap_dir)
    cache = EmbeddingCache(None)
    matched = clap_score(embedder, CAPTIONS, [[c] for c in pair_clips], cache, seed=0)
    swapped = clap_score(embedder, CAPTIONS[::-1], [[c] for c in pair_clips], cache, seed=0)
    assert matched.per_prompt[0] > swapped.per_prompt[0]
    assert matched.per_prompt[1] > swapped.per_prompt[1]
    assert matched.mean > swapped.mean
    assert -1.0 <= swapped.mean < matched.mean <= 1.0


def test_same_files_give_the_same_score_twice(trained_clap_dir, pair_clips):
    clips = [[c] for c in pair_clips]
    first = clap_score(load(trained_clap_dir), CAPTIONS, clips, EmbeddingCache(None), seed=3)
    second = clap_score(load(trained_clap_dir), CAPTIONS, clips, EmbeddingCache(None), seed=3)
    assert first.per_prompt == second.per_prompt
    assert first.mean == second.mean and first.interval == second.interval
    low, high = first.interval
    assert low <= first.mean <= high
    assert first.identity["sample_rate"] == 48_000


def test_score_is_the_cosine_of_text_and_mean_window_embedding(trained_clap_dir, tmp_path):
    embedder = load(trained_clap_dir)
    audio = np.concatenate([synthetic_pair_audio()[0], synthetic_pair_audio()[1]] * 3, axis=1)
    clip = Clip(write_audio(tmp_path / "long.wav", audio, 48_000))  # 18 s: two windows
    windows = embedder.embed(*clip.load())
    assert windows.shape[0] == 2
    text = embedder.embed_text(["calm piano"])[0]
    expected = float(np.dot(text, clip_embedding(windows)) / np.linalg.norm(text))
    score = clap_score(embedder, ["calm piano"], [[clip]], EmbeddingCache(None))
    assert score.per_prompt[0] == pytest.approx(expected, abs=1e-6)


def test_cosine_of_constructed_embeddings():
    text = np.array([[1.0, 0.0], [0.0, 2.0]])
    audio = np.array([[3.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(cosine_scores(text, audio), [1.0, np.sqrt(0.5)])
    np.testing.assert_allclose(
        clip_embedding(np.array([[1.0, 0.0], [0.0, 1.0]])), [np.sqrt(0.5), np.sqrt(0.5)]
    )
