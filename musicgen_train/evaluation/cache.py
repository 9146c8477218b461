"""Embedding cache: one ``.npy`` per (clip content, embedder identity).

The key hashes the clip's bytes (and window) together with the embedder's name, checkpoint,
weights digest, sample rate and windowing: re-evaluating the same files with the same embedder
never runs the model again, and any change to either is a different key.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from musicgen_train.evaluation.clips import Clip
from musicgen_train.evaluation.embedder_base import Embedder


class EmbeddingCache:
    def __init__(self, root: str | Path | None):
        self.root = Path(root) if root else None  # None: caching off
        self.hits = 0
        self.misses = 0

    def _path(self, clip: Clip, embedder: Embedder) -> Path:
        identity = json.dumps(embedder.identity(), sort_keys=True)
        key = hashlib.sha256(f"{clip.content_key()}\n{identity}".encode()).hexdigest()
        return self.root / embedder.name / key[:2] / f"{key}.npy"

    def embed(self, clip: Clip, embedder: Embedder) -> np.ndarray:
        """``[frames, dim]`` embeddings of ``clip``, from the cache when it has them."""
        path = self._path(clip, embedder) if self.root else None
        if path is not None and path.exists():
            self.hits += 1
            return np.load(path)
        self.misses += 1
        frames = embedder.embed(*clip.load())
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
            np.save(tmp, frames)
            tmp.replace(path)  # atomic: a reader never sees half a file
        return frames

    def embed_all(self, clips: list[Clip], embedder: Embedder) -> list[np.ndarray]:
        return [self.embed(clip, embedder) for clip in clips]


def embed_generations(
    cache: EmbeddingCache, embedder: Embedder, generations, metrics: list[str], warnings: list
) -> list[list[tuple[Clip, np.ndarray]]]:
    """Per prompt, ``(clip, frames)`` of each generated clip. A clip the embedder fails on (or
    embeds as NaN) is left out, with a line in ``warnings`` naming it and the ``metrics`` it is
    left out of: one odd clip does not throw the other scores away, nor is it dropped silently."""
    embedded = []
    for group in generations:
        kept = []
        for clip in group:
            try:
                frames = cache.embed(clip, embedder)
                if not np.all(np.isfinite(frames)):
                    raise ValueError("its embeddings are NaN or infinite")
                kept.append((clip, frames))
            except Exception as err:  # the embedder's network, a file gone, ...
                first = (str(err).splitlines() or [""])[0][:160]
                warnings.append(
                    f"{', '.join(metrics)}: generated clip {clip.path} left out: the "
                    f"{embedder.name} embedder failed on it ({type(err).__name__}: {first})"
                )
        embedded.append(kept)
    return embedded
