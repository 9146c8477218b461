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
    mean: float | None  # None: no prompt had a clip to score
    interval: tuple[float, float] | None
    per_prompt: list[float | None]  # None: none of the prompt's clips could be embedded
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
    windows = [[cache.embed(clip, embedder) for clip in group] for group in clips]
    return clap_score_of_embeddings(
        embedder,
        prompts,
        windows,
        bootstrap_samples=bootstrap_samples,
        confidence=confidence,
        seed=seed,
    )


def clap_score_of_embeddings(
    embedder: ClapEmbedder,
    prompts: list[str],
    windows: list[list[np.ndarray]],
    *,
    bootstrap_samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> ClapScore:
    """As ``clap_score``, from each clip's window embeddings (``windows[i]``: prompt ``i``'s
    clips). A prompt with no clip scores None and is left out of the mean and its interval."""
    if len(prompts) != len(windows):
        raise ValueError(f"{len(prompts)} prompts but {len(windows)} lists of clips")
    texts = embedder.embed_text(prompts)
    per_prompt: list[float | None] = []
    for text, clip_windows in zip(texts, windows, strict=True):
        if not clip_windows:
            per_prompt.append(None)
            continue
        audio = np.stack([clip_embedding(w) for w in clip_windows])
        per_prompt.append(float(cosine_scores(np.broadcast_to(text, audio.shape), audio).mean()))
    scored = [value for value in per_prompt if value is not None]
    if not scored:
        return ClapScore(None, None, per_prompt, embedder.identity())
    mean, interval = bootstrap_mean(
        scored, samples=bootstrap_samples, confidence=confidence, seed=seed
    )
    return ClapScore(mean, interval, per_prompt, embedder.identity())
