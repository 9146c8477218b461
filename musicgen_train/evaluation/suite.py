"""The metrics of one evaluation: FAD per embedder and the CLAP score, on lists of clips.

Built once per evaluation (or once per training run by the callback): embedders are loaded and
reference statistics computed once, then ``score(generations)`` runs for each model. Anything that
cannot run (missing weights offline, no reference) becomes one line in ``skipped`` and in the log,
never a crash and never a made-up number.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from musicgen_train.evaluation.cache import EmbeddingCache
from musicgen_train.evaluation.clap_score import clap_score
from musicgen_train.evaluation.clips import Clip
from musicgen_train.evaluation.embedders import Embedder, EmbedderUnavailable, build_embedder
from musicgen_train.evaluation.frechet import (
    Statistics,
    bootstrap_fad,
    fad_inf,
    per_song_fad,
)
from musicgen_train.evaluation.prompts import PromptSet
from musicgen_train.evaluation.reference import (
    Reference,
    ReferenceUnavailable,
    build_reference,
)

log = logging.getLogger(__name__)


class MetricSuite:
    def __init__(self, cfg: DictConfig, prompt_set: PromptSet, *, codec=None, codec_source=None):
        self.cfg = cfg
        self.ecfg = cfg.eval
        self.prompt_set = prompt_set
        self.skipped: list[str] = []
        cache_root = Path(cfg.work_dir) / "cache" / "embeddings" if self.ecfg.cache else None
        self.cache = EmbeddingCache(cache_root)
        self.embedders: list[Embedder] = []
        for name in self.ecfg.embedders:
            embedder = self._load(name, f"fad_{name}", codec, codec_source)
            if embedder is not None:
                self.embedders.append(embedder)
        self.clap = None
        if self.ecfg.clap_score:
            self.clap = next((e for e in self.embedders if e.name == "clap"), None)
            self.clap = self.clap or self._load("clap", "clap_score", codec, codec_source)
        self.reference: Reference | None = None
        self._reference_stats: dict[str, Statistics] = {}
        if self.embedders:
            try:
                self.reference = build_reference(cfg, prompt_set)
            except ReferenceUnavailable as err:
                for embedder in self.embedders:
                    self._skip(f"fad_{embedder.name}", f"no reference: {err}")

    def _skip(self, metric: str, reason: str) -> None:
        line = f"{metric}: skipped: {reason}"
        log.warning(line)
        self.skipped.append(line)

    def _load(self, name: str, metric: str, codec, codec_source) -> Embedder | None:
        try:
            return build_embedder(name, self.ecfg, codec=codec, codec_source=codec_source)
        except EmbedderUnavailable as err:
            self._skip(metric, str(err))
            return None

    def reference_statistics(self, embedder: Embedder) -> Statistics:
        if embedder.name not in self._reference_stats:
            self._reference_stats[embedder.name] = self.reference.statistics(embedder, self.cache)
        return self._reference_stats[embedder.name]

    def score(self, generations: list[list[Clip]]) -> dict:
        """``{"metrics": {name: entry}, "per_prompt": [...]}`` for one model's generations."""
        metrics: dict[str, dict] = {}
        per_prompt = [
            {"id": p.id, "text": p.text, "audio": [str(c.path) for c in clips]}
            for p, clips in zip(self.prompt_set.prompts, generations, strict=True)
        ]
        for line in self.skipped:
            metric = line.split(":", 1)[0]
            metrics.setdefault(metric, {"metric": metric, "value": None, "skipped": line})
        if self.reference is not None:
            for embedder in self.embedders:
                key = f"fad_{embedder.name}"
                try:
                    metrics[key] = self._fad(embedder, generations, per_prompt, key)
                except (ReferenceUnavailable, ValueError) as err:
                    line = f"{key}: skipped: {err}"
                    log.warning(line)
                    metrics[key] = {"metric": key, "value": None, "skipped": line}
        if self.clap is not None:
            metrics["clap_score"] = self._clap(generations, per_prompt)
        return {"metrics": metrics, "per_prompt": per_prompt}

    def _fad(self, embedder: Embedder, generations, per_prompt, key: str) -> dict:
        reference = self.reference_statistics(embedder)
        songs = [self.cache.embed(clip, embedder) for clips in generations for clip in clips]
        boot = self.ecfg.bootstrap
        value, interval = bootstrap_fad(
            songs,
            reference,
            samples=int(boot.samples),
            confidence=float(boot.confidence),
            seed=int(boot.seed),
        )
        per_song = per_song_fad(songs, reference)
        index = 0
        for row, clips in zip(per_prompt, generations, strict=True):
            scores = [s for s in per_song[index : index + len(clips)] if s is not None]
            row[key] = float(np.mean(scores)) if scores else None
            index += len(clips)
        entry = {
            "metric": "fad",
            "value": value,
            "interval": list(interval),
            "confidence": float(boot.confidence),
            **embedder.identity(),
            "clips": len(songs),
            "frames": int(sum(len(s) for s in songs)),
            "reference": self.reference.description,
            "reference_clips": len(self.reference.clips) or None,
            "reference_frames": reference.count,
            "comparable_to_published": embedder.comparable,
            "per_song": per_song,
        }
        entry["fad_inf"] = self._fad_inf(np.concatenate(songs), reference)
        return entry

    def _fad_inf(self, frames: np.ndarray, reference: Statistics) -> dict:
        settings = self.ecfg.fad_inf
        if not settings.enabled:
            return {"skipped": "eval.fad_inf.enabled is false"}
        if len(frames) < int(settings.min_frames):
            return {
                "skipped": f"needs at least {settings.min_frames} generated frames, "
                f"got {len(frames)}"
            }
        result = fad_inf(
            frames,
            reference,
            min_n=int(settings.min_frames),
            steps=int(settings.steps),
            seed=int(self.ecfg.bootstrap.seed),
        )
        return {"value": result.value, "slope": result.slope, "r2": result.r2}

    def _clap(self, generations, per_prompt) -> dict:
        boot = self.ecfg.bootstrap
        score = clap_score(
            self.clap,
            self.prompt_set.texts,
            generations,
            self.cache,
            bootstrap_samples=max(1, int(boot.samples)),
            confidence=float(boot.confidence),
            seed=int(boot.seed),
        )
        for row, value in zip(per_prompt, score.per_prompt, strict=True):
            row["clap_score"] = value
        return {
            "metric": "clap_score",
            "value": score.mean,
            "interval": list(score.interval),
            "confidence": float(boot.confidence),
            **score.identity,
            "clips": sum(len(c) for c in generations),
            "prompts": len(per_prompt),
            # audiocraft scored MusicGen with LAION's music checkpoint, this one on the hub.
            "comparable_to_published": str(self.clap.checkpoint)
            .rstrip("/")
            .endswith("larger_clap_music"),
        }
