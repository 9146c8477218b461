"""Metrics that need a third-party package and weights: they run when both are present, and are
one skip line in the report when not (never a crash, never a made-up number).

- ``kld_passt``: audiocraft's KLD. Each generation and its prompt's reference audio are
  classified by PaSST (AudioSet, 527 labels, 32 kHz mono, 10 s segments; softmax of the logits,
  averaged over a clip's segments); the score is the mean over pairs of
  KL(reference || generation) = sum_c q_c (log q_c - log(p_c + 1e-6)), as audiocraft computes
  it (``kl_div((p + eps).log(), q)`` summed over labels). Package ``hear21passt`` (its weights
  download from GitHub on first use). Needs prompts with ``reference`` audio to pair with.
- ``aes_ce``, ``aes_cu``, ``aes_pc``, ``aes_pq``: Meta's audiobox-aesthetics (content
  enjoyment, content usefulness, production complexity, production quality; 1-10), the mean over
  generations. Package ``audiobox-aesthetics``; weights ``eval.aesthetics.checkpoint`` (a local
  file) or ``facebook/audiobox-aesthetics`` from the Hugging Face cache.

Neither package is a dependency (both need torchaudio): ``pip install musicgen-train[metrics]``.
"""

from __future__ import annotations

import importlib.util
import logging

import numpy as np

from musicgen_train.audio import resample, to_channels
from musicgen_train.evaluation.intervals import bootstrap_mean

log = logging.getLogger(__name__)

AES_AXES = ("CE", "CU", "PC", "PQ")
PASST_RATE = 32_000
PASST_SEGMENT = 10 * PASST_RATE
PASST_MIN = int(0.15 * PASST_RATE)


class MetricUnavailable(Exception):
    """The package or the weights are missing: the metric is one skip line."""


def kl_divergence(pred_probs, target_probs, eps: float = 1e-6) -> np.ndarray:
    """Per row: sum_c q_c (log q_c - log(p_c + eps)); 0 where q_c = 0 (audiocraft's KLD)."""
    p = np.asarray(pred_probs, dtype=np.float64)
    q = np.asarray(target_probs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(q > 0, q * (np.log(q) - np.log(p + eps)), 0.0)
    return terms.sum(-1)


def _require(package: str, pip_name: str) -> None:
    if importlib.util.find_spec(package) is None:
        raise MetricUnavailable(
            f"the package {pip_name} is not installed (pip install {pip_name}, or "
            "musicgen-train[metrics]; it needs torchaudio)"
        )


class PasstClassifier:
    """PaSST label distributions of clips (hear21passt's ``get_basic_model(mode="logits")``)."""

    name = "passt"

    def __init__(self, model):
        self.model = model.eval()

    @classmethod
    def load(cls) -> PasstClassifier:
        _require("hear21passt", "hear21passt")
        try:
            from hear21passt.base import get_basic_model

            return cls(get_basic_model(mode="logits"))
        except Exception as err:  # its weights download from GitHub on first use
            raise MetricUnavailable(
                f"PaSST could not be loaded ({str(err).splitlines()[0][:120]}): run it once "
                "with network access so hear21passt caches its weights"
            ) from err

    def distribution(self, audio: np.ndarray, rate: int) -> np.ndarray | None:
        """Softmax over the 527 labels, averaged over the clip's 10 s segments (None if empty)."""
        import torch

        mono = to_channels(np.atleast_2d(np.asarray(audio, dtype=np.float32)), 1)
        wave = resample(mono, int(rate), PASST_RATE)[0]
        segments = [wave[s : s + PASST_SEGMENT] for s in range(0, len(wave), PASST_SEGMENT)]
        segments = [s for s in segments if len(s) > PASST_MIN]
        if not segments:
            return None
        probs = []
        with torch.no_grad():
            for segment in segments:
                logits = self.model(torch.from_numpy(np.ascontiguousarray(segment))[None])
                probs.append(torch.softmax(logits.float(), dim=-1)[0].numpy())
        return np.mean(probs, axis=0)


def kld_entry(classifier, generations, references, *, boot) -> dict:
    """``kld_passt``: generations of prompt i against prompt i's reference audio."""
    from musicgen_train.evaluation.clips import Clip

    scores = []
    for clips, reference in zip(generations, references, strict=True):
        if reference is None:
            continue
        target = classifier.distribution(*Clip(reference).load())
        for clip in clips:
            pred = classifier.distribution(*clip.load())
            if target is not None and pred is not None:
                scores.append(float(kl_divergence(pred, target)))
    if not scores:
        raise MetricUnavailable(
            "no prompt has reference audio to pair with (give prompts a `reference` file)"
        )
    mean, interval = bootstrap_mean(
        scores,
        samples=max(1, int(boot.samples)),
        confidence=float(boot.confidence),
        seed=int(boot.seed),
    )
    return {
        "metric": "kld_passt",
        "value": mean,
        "interval": list(interval),
        "confidence": float(boot.confidence),
        "embedder": "passt (hear21passt, AudioSet 527 labels)",
        "sample_rate": PASST_RATE,
        "window": "10 s segments (shorter than 0.15 s dropped), softmax averaged per clip",
        "clips": len(scores),
        "comparable_to_published": True,
    }


class AestheticsScorer:
    """audiobox-aesthetics' predictor: four 1-10 scores per clip."""

    def __init__(self, predictor, checkpoint: str):
        self.predictor = predictor
        self.checkpoint = checkpoint

    @classmethod
    def load(cls, settings) -> AestheticsScorer:
        _require("audiobox_aesthetics", "audiobox-aesthetics")
        checkpoint = (settings or {}).get("checkpoint") or None
        try:
            from audiobox_aesthetics.infer import initialize_predictor

            predictor = initialize_predictor(checkpoint)
        except Exception as err:
            raise MetricUnavailable(
                "audiobox-aesthetics weights could not be loaded "
                f"({str(err).splitlines()[0][:120]}): set eval.aesthetics.checkpoint to the "
                "checkpoint file, or download facebook/audiobox-aesthetics once"
            ) from err
        return cls(predictor, checkpoint or "facebook/audiobox-aesthetics")

    def scores(self, audio: np.ndarray, rate: int) -> dict[str, float]:
        import torch

        wave = torch.from_numpy(np.atleast_2d(np.asarray(audio, dtype=np.float32)))
        (row,) = self.predictor.forward([{"path": wave, "sample_rate": int(rate)}])
        return {axis: float(row[axis]) for axis in AES_AXES}


def aesthetics_entries(scorer, generations, *, boot) -> dict[str, dict]:
    """``aes_ce`` ... ``aes_pq``: the mean score over all generations, with a bootstrap spread."""
    rows = [scorer.scores(*clip.load()) for clips in generations for clip in clips]
    entries = {}
    for axis in AES_AXES:
        mean, interval = bootstrap_mean(
            [r[axis] for r in rows],
            samples=max(1, int(boot.samples)),
            confidence=float(boot.confidence),
            seed=int(boot.seed),
        )
        entries[f"aes_{axis.lower()}"] = {
            "metric": f"aes_{axis.lower()}",
            "value": mean,
            "interval": list(interval),
            "confidence": float(boot.confidence),
            "embedder": "audiobox-aesthetics",
            "checkpoint": scorer.checkpoint,
            "sample_rate": 16_000,
            "window": "10 s windows, weighted mean per clip (the package's own)",
            "clips": len(rows),
            "comparable_to_published": True,
        }
    return entries


AES_METRICS = [f"aes_{axis.lower()}" for axis in AES_AXES]
