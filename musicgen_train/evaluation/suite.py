"""The metrics of one evaluation: FAD and KAD per embedder and the CLAP score, on lists of clips.

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

from musicgen_train.evaluation.cache import EmbeddingCache, embed_generations
from musicgen_train.evaluation.clap_score import clap_score_of_embeddings
from musicgen_train.evaluation.clips import Clip
from musicgen_train.evaluation.embedders import Embedder, EmbedderUnavailable, build_embedder
from musicgen_train.evaluation.frechet import (
    Statistics,
    bootstrap_fad,
    fad_inf_entry,
    per_song_fad,
    statistics_from_embeddings,
)
from musicgen_train.evaluation.kad import bootstrap_kad
from musicgen_train.evaluation.optional_metrics import (
    AES_METRICS,
    AestheticsScorer,
    MetricUnavailable,
    PasstClassifier,
    aesthetics_entries,
    kld_entry,
)
from musicgen_train.evaluation.prompts import PromptSet
from musicgen_train.evaluation.reference import (
    Reference,
    ReferenceUnavailable,
    build_reference,
)

log = logging.getLogger(__name__)

MIN_CLIPS = 10  # fewer clips: a bootstrap over clips has too few distinct draws to mean much
MIN_PROMPTS = 5
INTERVAL_KIND = (
    "bootstrap spread over clips: how much the score moves between sets of this size, "
    "not a confidence interval for the true distance"
)


def clip_outliers(clips: list[Clip], per_song: list[float | None], count: int) -> list[dict]:
    """The ``count`` clips farthest from the reference (largest per-song FAD), farthest first."""
    scored = [(v, c) for v, c in zip(per_song, clips, strict=True) if v is not None]
    scored.sort(key=lambda item: -item[0])
    return [
        {"clip": str(clip.path), "prompt": clip.name, "per_song_fad": value}
        for value, clip in scored[:count]
    ]


class MetricSuite:
    def __init__(self, cfg: DictConfig, prompt_set: PromptSet, *, codec=None, codec_source=None):
        self.cfg = cfg
        self.ecfg = cfg.eval
        self.prompt_set = prompt_set
        self.skipped: list[str] = []
        cache_root = Path(cfg.work_dir) / "cache" / "embeddings" if self.ecfg.cache else None
        self.cache = EmbeddingCache(cache_root)
        self.embedders: list[Embedder] = []
        self.skipped_metrics: dict[str, str] = {}  # metric -> the one line that skipped it
        wants_clap = bool(self.ecfg.clap_score)
        for name in self.ecfg.embedders:
            metrics = self.distance_metrics(name)
            if name == "clap" and wants_clap:
                metrics.append("clap_score")  # one load, one line, for all three
            embedder = self._load(name, metrics, codec, codec_source)
            if embedder is not None:
                self.embedders.append(embedder)
        self.clap = None
        if wants_clap and "clap_score" not in self.skipped_metrics:
            self.clap = next((e for e in self.embedders if e.name == "clap"), None)
            self.clap = self.clap or self._load("clap", ["clap_score"], codec, codec_source)
        self.kld = self._optional(["kld_passt"], "kld", PasstClassifier.load)
        self.aesthetics = self._optional(
            AES_METRICS, "aesthetics", lambda: AestheticsScorer.load(self.ecfg.get("aesthetics"))
        )
        self.reference: Reference | None = None
        self._reference_stats: dict[str, Statistics] = {}
        self._reference_frames: dict[str, np.ndarray] = {}
        if self.embedders:
            try:
                self.reference = build_reference(cfg, prompt_set)
            except ReferenceUnavailable as err:
                names = [m for e in self.embedders for m in self.distance_metrics(e.name)]
                self._skip(names, f"no reference: {err}")
        if self.reference is not None and self.reference.stats_file is not None:
            self._check_stored_statistics()

    def _check_stored_statistics(self) -> None:
        """With a ``.npz`` reference, each embedder's statistics are read now (a missing or
        mismatched entry is one line before generating, not after), and KAD, which needs the
        frames, is skipped once."""
        for embedder in self.embedders:
            try:
                self.reference_statistics(embedder)
            except (ReferenceUnavailable, ValueError) as err:
                self._skip([f"fad_{embedder.name}"], str(err))
        kads = [m for e in self.embedders for m in self.distance_metrics(e.name)[1:]]
        if kads:
            self._skip(
                kads,
                f"the reference is a statistics file ({self.reference.stats_file.name}): KAD "
                "needs the reference audio or its embeddings, not only their mean and covariance",
            )

    def _optional(self, metrics: list[str], key: str, load):
        """A package-and-weights metric: loaded when ``eval.<key>.enabled``, else nothing."""
        if not (self.ecfg.get(key) or {}).get("enabled", False):
            return None
        try:
            return load()
        except MetricUnavailable as err:
            self._skip(metrics, str(err))
            return None

    def distance_metrics(self, name: str) -> list[str]:
        kad = bool(self.ecfg.get("kad", {}).get("enabled", True))
        return [f"fad_{name}", *([f"kad_{name}"] if kad else [])]

    def _skip(self, metrics: list[str], reason: str) -> None:
        """One line for every metric one cause skips (logged and listed once, not per metric)."""
        line = f"{', '.join(metrics)}: skipped: {reason}"
        log.warning(line)
        self.skipped.append(line)
        for metric in metrics:
            self.skipped_metrics[metric] = line

    def _load(self, name: str, metrics: list[str], codec, codec_source) -> Embedder | None:
        try:
            return build_embedder(name, self.ecfg, codec=codec, codec_source=codec_source)
        except EmbedderUnavailable as err:
            self._skip(metrics, str(err))
            return None

    def reference_statistics(self, embedder: Embedder) -> Statistics:
        if embedder.name not in self._reference_stats:
            if self.reference.stats_file is not None:
                stats = self.reference.statistics(embedder, self.cache)
            else:  # from the frames KAD also uses: the reference is read once
                stats = statistics_from_embeddings(
                    self._all_reference_frames(embedder), embedder.identity()
                )
            self._reference_stats[embedder.name] = stats
        return self._reference_stats[embedder.name]

    def _all_reference_frames(self, embedder: Embedder) -> np.ndarray:
        key = f"all:{embedder.name}"
        if key not in self._reference_frames:
            self._reference_frames[key] = self.reference.embeddings(embedder, self.cache)
        return self._reference_frames[key]

    def reference_frames(self, embedder: Embedder) -> np.ndarray:
        """The reference frames KAD uses: all, or a seeded ``eval.kad.max_reference_frames``."""
        if embedder.name not in self._reference_frames:
            frames = self._all_reference_frames(embedder)
            limit = self.ecfg.get("kad", {}).get("max_reference_frames")
            if limit and len(frames) > int(limit):
                rng = np.random.default_rng(int(self.ecfg.bootstrap.seed))
                frames = frames[np.sort(rng.choice(len(frames), int(limit), replace=False))]
            self._reference_frames[embedder.name] = frames
        return self._reference_frames[embedder.name]

    def score(self, generations: list[list[Clip]]) -> dict:
        """``{"metrics": {name: entry}, "per_prompt": [...], "outliers": {...}, "warnings": [...]}``
        for one model's generations."""
        metrics: dict[str, dict] = {}
        warnings: list[str] = []
        outliers: dict[str, list[dict]] = {}
        per_prompt = [
            {"id": p.id, "text": p.text, "audio": [str(c.path) for c in clips]}
            for p, clips in zip(self.prompt_set.prompts, generations, strict=True)
        ]
        for metric, line in self.skipped_metrics.items():
            metrics[metric] = {"metric": metric, "value": None, "skipped": line}
        embedded = {}  # embedder name -> per prompt, (clip, frames) of the clips it could embed
        for embedder in self._embedders_to_run():
            embedded[embedder.name] = self._embed_generated(embedder, generations, warnings)
        if self.reference is not None:
            for embedder in (e for e in self.embedders if e.name in embedded):
                kept = [[clip for clip, _ in group] for group in embedded[embedder.name]]
                songs = [frames for group in embedded[embedder.name] for _, frames in group]
                for key, compute in (
                    (f"fad_{embedder.name}", self._fad),
                    (f"kad_{embedder.name}", self._kad),
                ):
                    if key not in self.distance_metrics(embedder.name):
                        continue
                    if key in self.skipped_metrics:
                        continue
                    try:
                        if not songs:
                            raise ValueError(f"the {embedder.name} embedder failed on every clip")
                        metrics[key] = compute(embedder, kept, songs, per_prompt, key)
                    except (ReferenceUnavailable, ValueError) as err:
                        line = f"{key}: skipped: {err}"
                        log.warning(line)
                        metrics[key] = {"metric": key, "value": None, "skipped": line}
                        continue
                    warnings += [f"{key}: {w}" for w in metrics[key].pop("warnings", [])]
                    if "clip_outliers" in metrics[key]:
                        outliers[key] = metrics[key].pop("clip_outliers")
        if self.clap is not None:
            metrics["clap_score"] = self._clap(embedded["clap"], per_prompt)
            if len(per_prompt) < MIN_PROMPTS:
                warnings.append(
                    f"clap_score: only {len(per_prompt)} prompts (< {MIN_PROMPTS}): its interval "
                    "over prompts is rough"
                )
        boot = self.ecfg.bootstrap
        if self.kld is not None:
            references = [p.reference for p in self.prompt_set.prompts]
            try:
                metrics["kld_passt"] = kld_entry(self.kld, generations, references, boot=boot)
            except MetricUnavailable as err:
                line = f"kld_passt: skipped: {err}"
                log.warning(line)
                metrics["kld_passt"] = {"metric": "kld_passt", "value": None, "skipped": line}
        if self.aesthetics is not None:
            metrics.update(aesthetics_entries(self.aesthetics, generations, boot=boot))
        for line in warnings:
            log.warning(line)
        return {
            "metrics": metrics,
            "per_prompt": per_prompt,
            "outliers": outliers,
            "warnings": warnings,
        }

    def _embedders_to_run(self) -> list[Embedder]:
        """Those with a metric left to compute: none for a distance without a reference."""
        wanted = [
            e
            for e in self.embedders
            if self.reference is not None
            and any(m not in self.skipped_metrics for m in self.distance_metrics(e.name))
        ]
        return wanted + ([self.clap] if self.clap is not None and self.clap not in wanted else [])

    def _embed_generated(self, embedder: Embedder, generations, warnings: list[str]) -> list:
        """Per prompt, ``(clip, frames)`` of the generated clips ``embedder`` could embed."""
        metrics = self.distance_metrics(embedder.name) if embedder in self.embedders else []
        metrics = [m for m in metrics if m not in self.skipped_metrics]
        if embedder is self.clap:
            metrics.append("clap_score")
        return embed_generations(self.cache, embedder, generations, metrics, warnings)

    def _fad(self, embedder: Embedder, generations, songs, per_prompt, key: str) -> dict:
        reference = self.reference_statistics(embedder)
        boot = self.ecfg.bootstrap
        value, interval = bootstrap_fad(
            songs,
            reference,
            samples=int(boot.samples),
            confidence=float(boot.confidence),
            seed=int(boot.seed),
        )
        per_song = per_song_fad(songs, reference)
        all_clips = [clip for group in generations for clip in group]
        index = 0
        for row, clips in zip(per_prompt, generations, strict=True):
            scores = [s for s in per_song[index : index + len(clips)] if s is not None]
            row[key] = float(np.mean(scores)) if scores else None
            index += len(clips)
        dim = int(reference.mu.shape[0])
        frames = int(sum(len(s) for s in songs))
        warnings = []
        if frames < 2 * dim:
            warnings.append(
                f"{frames} generated frames for {dim}-d embeddings (< {2 * dim}): the "
                "covariance is rank-deficient and FAD is dominated by its small-sample bias"
            )
        if reference.count and reference.count < 2 * dim:
            warnings.append(
                f"the reference has {reference.count} frames for {dim}-d embeddings "
                f"(< {2 * dim}): its covariance is rank-deficient"
            )
        if len(songs) < MIN_CLIPS:
            warnings.append(
                f"only {len(songs)} generated clips (< {MIN_CLIPS}): the bootstrap spread over "
                "clips is rough"
            )
        entry = {
            "metric": "fad",
            "value": value,
            "interval": list(interval),
            "interval_kind": INTERVAL_KIND,
            "confidence": float(boot.confidence),
            **embedder.identity(),
            "clips": len(songs),
            "frames": int(sum(len(s) for s in songs)),
            "reference": self.reference.description,
            "reference_clips": self.reference.used.get(embedder.name),
            "reference_frames": reference.count,
            "comparable_to_published": embedder.comparable,
            "per_song": per_song,
            "warnings": warnings,
            "clip_outliers": clip_outliers(all_clips, per_song, int(self.ecfg.get("outliers", 5))),
        }
        entry["fad_inf"] = fad_inf_entry(
            np.concatenate(songs), reference, self.ecfg.fad_inf, int(self.ecfg.bootstrap.seed)
        )
        if entry["fad_inf"].get("warning"):
            warnings.append(f"FAD-inf: {entry['fad_inf']['warning']}")
        return entry

    def _kad(self, embedder: Embedder, generations, songs, per_prompt, key: str) -> dict:
        reference = self.reference_frames(embedder)
        boot = self.ecfg.bootstrap
        result = bootstrap_kad(
            reference,
            songs,
            samples=int(boot.samples),
            confidence=float(boot.confidence),
            seed=int(boot.seed),
        )
        warnings = []
        if len(songs) < MIN_CLIPS:
            warnings.append(
                f"only {len(songs)} generated clips (< {MIN_CLIPS}): the bootstrap spread over "
                "clips is rough"
            )
        return {
            "metric": "kad",
            "value": result.value,
            "interval": list(result.interval),
            "interval_kind": INTERVAL_KIND,
            "confidence": float(boot.confidence),
            **embedder.identity(),
            "kernel": "gaussian, bandwidth = median pairwise distance of the generated frames",
            "bandwidth": result.bandwidth,
            "scale": 100,
            "clips": len(songs),
            "frames": result.frames,
            "reference": self.reference.description,
            "reference_clips": self.reference.used.get(embedder.name),
            "reference_frames": result.reference_frames,
            "comparable_to_published": embedder.comparable,
            "warnings": warnings,
        }

    def _clap(self, embedded, per_prompt) -> dict:
        boot = self.ecfg.bootstrap
        score = clap_score_of_embeddings(
            self.clap,
            self.prompt_set.texts,
            [[frames for _, frames in group] for group in embedded],
            bootstrap_samples=max(1, int(boot.samples)),
            confidence=float(boot.confidence),
            seed=int(boot.seed),
        )
        for row, value in zip(per_prompt, score.per_prompt, strict=True):
            row["clap_score"] = value
        if score.mean is None:
            line = "clap_score: skipped: the clap embedder failed on every generated clip"
            return {"metric": "clap_score", "value": None, "skipped": line}
        return {
            "metric": "clap_score",
            "value": score.mean,
            "interval": list(score.interval),
            "interval_kind": "bootstrap over prompts (the mean score of resampled prompt sets)",
            "confidence": float(boot.confidence),
            **score.identity,
            "clips": sum(len(group) for group in embedded),
            "prompts": sum(value is not None for value in score.per_prompt),
            # audiocraft scored MusicGen with LAION's music checkpoint, this one on the hub.
            "comparable_to_published": str(self.clap.checkpoint)
            .rstrip("/")
            .endswith("larger_clap_music"),
        }
