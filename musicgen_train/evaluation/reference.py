"""The reference FAD compares against: audio clips, or statistics computed elsewhere.

``eval.reference``:
- ``valid`` (default): the held-out ``valid`` split of the training data's token cache
  (``data.output``): each segment's window (source, offset, duration) of its original file. The
  cache is prepared first when it is missing (the demo works on a fresh machine).
- ``prompts``: the ``reference`` audio files listed in the prompt set.
- a folder: every audio file below it.
- a ``.npz`` file: statistics in fadtk's layout (``<embedder>.mu``, ``<embedder>.cov``).
"""

from __future__ import annotations

import json
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from musicgen_train.audio import (
    AUDIO_EXTENSIONS,
    UNSUPPORTED_AUDIO,
    audio_info,
    unsupported_reason,
)
from musicgen_train.errors import UserError
from musicgen_train.evaluation.cache import EmbeddingCache
from musicgen_train.evaluation.clips import Clip
from musicgen_train.evaluation.embedder_base import Embedder
from musicgen_train.evaluation.frechet import (
    Statistics,
    load_statistics,
    statistics_from_embeddings,
)
from musicgen_train.evaluation.prompts import PromptSet

log = logging.getLogger(__name__)


class ReferenceUnavailable(Exception):
    """No reference can be built: FAD is skipped with this one-line reason."""


@dataclass
class Reference:
    description: str
    clips: list[Clip] = field(default_factory=list)
    stats_file: Path | None = None
    notes: list[str] = field(default_factory=list)  # what was left out, and why
    used: dict[str, int] = field(default_factory=dict)  # embedder -> clips it could embed

    def summary(self) -> dict:
        seconds = sum(c.duration or 0.0 for c in self.clips)
        return {
            "description": self.description,
            "clips": len(self.clips),
            "clips_used": self.used,
            "seconds": round(seconds, 3) if seconds else None,
            "stats_file": str(self.stats_file) if self.stats_file else None,
            "notes": self.notes,
        }

    def statistics(self, embedder: Embedder, cache: EmbeddingCache) -> Statistics:
        if self.stats_file is not None:
            return self._stored_statistics(embedder)
        return statistics_from_embeddings(self.embeddings(embedder, cache), embedder.identity())

    def _stored_statistics(self, embedder: Embedder) -> Statistics:
        """Statistics from the ``.npz``: under our name (same windowing, checked), or under
        fadtk's name only when the embedder embeds as fadtk does; otherwise one refusal line."""
        names = [embedder.name]
        if embedder.fadtk_mismatch is None:
            names += list(embedder.fadtk_names)
        try:
            stats = load_statistics(self.stats_file, names)
        except KeyError as err:
            with np.load(self.stats_file) as data:
                fadtk = [n for n in embedder.fadtk_names if f"{n}.mu" in data]
            if fadtk and embedder.fadtk_mismatch:
                raise ReferenceUnavailable(
                    f"{self.stats_file.name} holds fadtk's '{fadtk[0]}' statistics, but "
                    f"{embedder.fadtk_mismatch}"
                ) from err
            raise ReferenceUnavailable(str(err).strip("'\"")) from err
        window = stats.identity.get("window")
        if window is not None and window != embedder.window:
            raise ReferenceUnavailable(
                f"{self.stats_file.name} was embedded with another windowing ({window!r}), "
                f"this {embedder.name} embedder uses {embedder.window!r}"
            )
        # Same dimension, other weights (two CLAP checkpoints are both 512-d): a distance
        # between two embedding spaces would be a number, and a meaningless one.
        weights = stats.identity.get("weights")
        if weights is not None and weights != embedder.weights_digest:
            raise ReferenceUnavailable(
                f"{self.stats_file.name} was embedded with other {embedder.name} weights "
                f"({stats.identity.get('checkpoint')}, digest {weights}) than "
                f"{embedder.checkpoint} (digest {embedder.weights_digest}): make the statistics "
                "again with these weights (`musicgen-train evaluate stats`)"
            )
        return stats

    def embeddings(self, embedder: Embedder, cache: EmbeddingCache) -> np.ndarray:
        """All reference frames ``[frames, dim]`` (KAD needs them; a ``.npz`` holds none)."""
        if self.stats_file is not None:
            raise ReferenceUnavailable(
                f"the reference is a statistics file ({self.stats_file.name}): KAD needs the "
                "reference audio or its embeddings, not only their mean and covariance"
            )
        frames = []
        for clip in self.clips:
            try:
                if audio_info(clip.path)[0] <= clip.offset:  # embedders would pad it to silence
                    raise ValueError("it holds no audio (0 samples in the file or the window)")
                embedded = cache.embed(clip, embedder)
                if not np.all(np.isfinite(embedded)):  # one such clip would void the metric
                    raise ValueError(
                        f"its {embedder.name} embeddings are NaN or infinite (NaN or infinite "
                        "samples in the file?)"
                    )
                frames.append(embedded)
            except (OSError, RuntimeError, ValueError) as err:  # soundfile's errors included
                note = f"reference clip {clip.path} skipped: {str(err).splitlines()[0]}"
                if note not in self.notes:
                    log.warning("reference: %s", note)
                    self.notes.append(note)
        self.used[embedder.name] = len(frames)
        if not frames:
            raise ReferenceUnavailable("no reference clip could be read")
        return np.concatenate(frames)


def build_reference(cfg, prompt_set: PromptSet) -> Reference:
    choice = str(cfg.eval.reference)
    limit = cfg.eval.get("reference_max_clips")
    if choice == "valid":
        return _valid_split(cfg, limit)
    if choice == "prompts":
        clips = [Clip(p.reference, name=p.id) for p in prompt_set.prompts if p.reference]
        if not clips:
            raise ReferenceUnavailable(f"prompt set {prompt_set.path} lists no reference audio")
        return Reference(f"reference audio of prompt set {prompt_set.name}", clips[:limit])
    path = Path(choice).expanduser()
    if path.suffix.lower() == ".npz":  # x.NPZ too (a Windows or FAT copy)
        if not path.is_file():
            raise ReferenceUnavailable(f"reference statistics file {path} does not exist")
        _check_statistics_file(path)
        return Reference(f"statistics file {path}", stats_file=path)
    if path.is_dir():
        return _folder(path, limit)
    if path.exists() or len(path.parts) > 1:  # a path the user meant, but not a folder
        what = "is not a folder" if path.exists() else "does not exist"
        raise ReferenceUnavailable(
            f"eval.reference={choice!r}: {path} {what} (give a folder of audio, a .npz "
            "statistics file, valid or prompts)"
        )
    raise ReferenceUnavailable(
        f"eval.reference={choice!r} is not valid, prompts, a folder of audio or a .npz file"
    )


def _check_statistics_file(path: Path) -> None:
    """A ``.npz`` that numpy cannot open (truncated copy, another format renamed) is one line
    now, before anything is generated."""
    again = "write it again with `musicgen-train evaluate stats` or copy it again"
    if not zipfile.is_zipfile(path):  # numpy would call it "pickled data", which misleads
        raise ReferenceUnavailable(
            f"reference statistics file {path} is not a .npz archive (truncated or another "
            f"format): {again}"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            data.files  # noqa: B018 (reads the archive's directory)
    except Exception as err:  # BadZipFile, ValueError, OSError
        raise ReferenceUnavailable(
            f"reference statistics file {path} cannot be read ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:100]}): {again}"
        ) from err


def _folder(path: Path, limit: int | None) -> Reference:
    """The audio files below ``path``; those libsndfile cannot read (m4a, ...) become notes."""
    names = sorted(p for p in path.rglob("*") if p.is_file())
    files = [p for p in names if p.suffix.lower() in AUDIO_EXTENSIONS]
    unreadable = [p for p in names if p.suffix.lower() in UNSUPPORTED_AUDIO]
    notes = [f"reference clip {p} skipped: {unsupported_reason(p.suffix)}" for p in unreadable]
    for note in notes:
        log.warning("reference: %s", note)
    if not files:
        also = f" ({len(unreadable)} it cannot read: convert them to flac or wav)" if notes else ""
        raise ReferenceUnavailable(f"reference folder {path} holds no audio files{also}")
    clips = [Clip(p, name=p.name) for p in files[:limit]]
    return Reference(f"audio files in {path}", clips, notes=notes)


def _valid_split(cfg, limit: int | None) -> Reference:
    cache_dir = Path(cfg.data.output)
    manifest = cache_dir / "manifest.jsonl"
    if not manifest.exists():
        from musicgen_train.data.prepare import ensure_token_cache

        log.info("reference: preparing the token cache %s (it is missing)", cache_dir)
        try:
            cache_dir = Path(ensure_token_cache(cfg))
        except UserError as err:
            message = f"the token cache {cache_dir} could not be prepared: {err}"
            raise ReferenceUnavailable(message) from err
        manifest = cache_dir / "manifest.jsonl"
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    valid = sorted((r for r in rows if r.get("split") == "valid"), key=lambda r: r["id"])
    if not valid:
        raise ReferenceUnavailable(f"the token cache {cache_dir} has no valid split")
    clips, missing = [], []
    for row in valid:
        source = Path(row["source"])
        if not source.is_absolute():
            source = cache_dir / source
        if source.is_file():
            clips.append(Clip(source, float(row["offset"]), float(row["duration"]), row["id"]))
        else:
            missing.append(row["source"])
    notes = []
    if missing:
        notes.append(
            f"{len(missing)} valid segments skipped: their audio is not a file (e.g. {missing[0]})"
        )
        log.warning("reference: %s", notes[-1])
    if not clips:
        raise ReferenceUnavailable(f"no audio file of the valid split of {cache_dir} is readable")
    return Reference(f"valid split of the token cache {cache_dir}", clips[:limit], notes=notes)
