"""CLAP score: how well each generation follows its prompt.

score(prompt, audio) = cosine(CLAP text embedding of the prompt, CLAP audio embedding of the
audio at 48 kHz mono). A clip's audio embedding is the mean of its (deterministic, consecutive)
window embeddings, re-normalised to unit length. A prompt with several generations scores the
mean over them; the set scores the mean over prompts, with a seeded bootstrap interval.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from musicgen_train.evaluation.cache import EmbeddingCache
from musicgen_train.evaluation.clap import ClapEmbedder
from musicgen_train.evaluation.clips import Clip
from musicgen_train.evaluation.intervals import bootstrap_mean


@dataclass
class ClapScore:
    mean: float
    interval: tuple[float, float]
    per_prompt: list[float]
    identity: dict = field(default_factory=dict)


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


def clip_embedding(window_embeddings: np.ndarray) -> np.ndarray:
    """One unit vector for a clip from its window embeddings."""
    return _unit(np.asarray(window_embeddings, dtype=np.float64).mean(axis=0))


def cosine_scores(text_embeddings: np.ndarray, audio_embeddings: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of matching rows."""
    return np.sum(_unit(text_embeddings) * _unit(audio_embeddings), axis=-1)


def clap_score(
    embedder: ClapEmbedder,
    prompts: list[str],
    clips: list[list[Clip]],
    cache: EmbeddingCache,
    *,
    bootstrap_samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> ClapScore:
    """Score ``clips[i]`` (the generations of ``prompts[i]``) against ``prompts[i]``."""
    if len(prompts) != len(clips):
        raise ValueError(f"{len(prompts)} prompts but {len(clips)} lists of clips")
    texts = embedder.embed_text(prompts)
    per_prompt = []
    for text, generations in zip(texts, clips, strict=True):
        audio = np.stack([clip_embedding(cache.embed(clip, embedder)) for clip in generations])
        per_prompt.append(float(cosine_scores(np.broadcast_to(text, audio.shape), audio).mean()))
    mean, interval = bootstrap_mean(
        per_prompt, samples=bootstrap_samples, confidence=confidence, seed=seed
    )
    return ClapScore(mean, interval, per_prompt, embedder.identity())
