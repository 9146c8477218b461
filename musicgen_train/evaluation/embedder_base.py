"""What every embedder shares: the ``Embedder`` interface, its error, and a weights digest.

An embedder turns a clip into ``[frames, dim]`` embeddings. It resamples to its OWN rate first
(VGGish 16 kHz, CLAP 48 kHz, EnCodec 24/32/48 kHz, log-mel 16 kHz), whatever rate the clip has,
and states that rate and its windowing in ``identity()``, which goes into every report and into
the key of the embedding cache. The embedder modules import this module, never the registry
(``embedders.py``), so no import circle exists.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod

import numpy as np
import torch

from musicgen_train.audio import resample, to_channels


class EmbedderUnavailable(Exception):
    """The embedder's weights cannot be found (offline, no file): its metric is skipped."""


class Embedder(ABC):
    name: str  # short id, also the key of its statistics in an .npz
    sample_rate: int
    window: str  # how a clip becomes frames, for people reading a report
    checkpoint: str | None = None
    weights_digest: str | None = None  # identifies the weights for the cache
    # Whether numbers can be compared with published ones computed with the same embedder.
    comparable: bool = True
    # The names fadtk gives the same statistics in its .npz files.
    fadtk_names: tuple[str, ...] = ()
    # None when this embedder embeds as fadtk does (its statistics may be compared); otherwise
    # the one-line reason the mapping to ``fadtk_names`` is refused, and how to get it.
    fadtk_mismatch: str | None = None

    @classmethod
    def from_config(cls, section, *, codec=None, codec_source: str | None = None) -> Embedder:
        """Build from the embedder's config section (``eval.<name>``); weight-free ones need none.

        Raises ``EmbedderUnavailable`` when weights cannot be found.
        """
        return cls()

    def identity(self) -> dict:
        return {
            "embedder": self.name,
            "checkpoint": self.checkpoint,
            "weights": self.weights_digest,
            "sample_rate": self.sample_rate,
            "window": self.window,
        }

    def embed(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """Audio ``[channels, samples]`` at ``sample_rate`` -> float32 ``[frames, dim]``."""
        mono = to_channels(np.atleast_2d(np.asarray(audio, dtype=np.float32)), 1)
        wave = resample(mono, int(sample_rate), self.sample_rate)[0]
        with torch.inference_mode():
            frames = self.embed_mono(np.ascontiguousarray(wave))
        return np.asarray(frames, dtype=np.float32)

    @abstractmethod
    def embed_mono(self, wave: np.ndarray) -> np.ndarray:
        """Mono float32 samples at ``self.sample_rate`` -> ``[frames, dim]``."""


def state_dict_digest(module: torch.nn.Module) -> str:
    """A short hash of a module's weights: a cache entry never outlives the weights it came from."""
    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(
            tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()[:16]
