"""Statistics of audio files with an embedder: what a reference ``.npz`` is made from."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from musicgen_train.evaluation.cache import EmbeddingCache
from musicgen_train.evaluation.clips import Clip
from musicgen_train.evaluation.embedder_base import Embedder
from musicgen_train.evaluation.frechet import Statistics, statistics_from_embeddings


def statistics_from_files(
    paths: list[str | Path], embedder: Embedder, cache: EmbeddingCache | None = None
) -> Statistics:
    """Embed every file with ``embedder`` (through the cache) and fit mean and covariance."""
    if not paths:
        raise ValueError("no audio files to compute statistics from")
    cache = cache or EmbeddingCache(None)
    frames = [cache.embed(Clip(Path(p), name=Path(p).name), embedder) for p in paths]
    return statistics_from_embeddings(np.concatenate(frames), embedder.identity())
