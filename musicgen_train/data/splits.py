"""The end of a prepare: files split into train/valid, the manifest's lines, the report."""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Iterable

import numpy as np
from omegaconf import DictConfig

from musicgen_train.data.same_source import local_source

log = logging.getLogger("musicgen_train.data.prepare")


def assign_splits(
    keys: Iterable[str], seed: int, valid_fraction: float, groups: dict[str, str] | None = None
) -> dict[str, str]:
    """``key -> "train" | "valid"``, by file, from a seeded hash: the same files always land on
    the same side. At least one valid file when there are two or more and the fraction is > 0.
    With ``groups`` (key -> group, e.g. the genre), each group is split on its own, so that every
    group is represented on both sides."""
    if groups is not None:
        splits: dict[str, str] = {}
        for group in sorted(set(groups.values())):
            members = [k for k in keys if groups[k] == group]
            splits.update(assign_splits(members, seed, valid_fraction))
        return splits
    keys = sorted(set(keys))
    count = 0
    if len(keys) >= 2 and valid_fraction > 0:
        count = min(len(keys) - 1, max(1, round(valid_fraction * len(keys))))
    ranked = sorted(keys, key=lambda k: hashlib.sha256(f"{seed}\0{k}".encode()).hexdigest())
    valid = set(ranked[:count])
    return {key: "valid" if key in valid else "train" for key in keys}


def final_entries(files: list, cfg: DictConfig) -> list[dict]:
    keys = [f.key for f in files]
    field = cfg.data.get("stratify_by")
    groups = {f.key: _metadata_value(f, field) for f in files} if field else None
    splits = assign_splits(keys, int(cfg.seed), float(cfg.data.get("valid_fraction", 0.1)), groups)
    entries = []
    for result in sorted(files, key=lambda f: f.key):
        for entry in sorted(result.entries, key=lambda e: e["segment"]):
            entries.append({**entry, "split": splits[result.key]})
    missing = [e["id"] for e in entries if "shard" not in e and "part" not in e]
    if missing:  # would be a bug in the writer: never write a manifest pointing nowhere
        raise RuntimeError(f"segments without codes: {missing[:3]}")
    return entries


def _metadata_value(result, field: str) -> str:
    """The file's caption field ``field`` (files without it form one group of their own)."""
    metadata = result.entries[0].get("metadata", {}) if result.entries else {}
    return str(metadata.get(field, ""))


def build_report(cfg, cache, encoder, files, skipped, removed, entries, counts) -> dict:
    tokens = sum(e["frames"] for e in entries) * encoder.num_codebooks
    splits = {}
    for name in ("train", "valid"):
        part = [e for e in entries if e["split"] == name]
        splits[name] = {"files": len({e["key"] for e in part}), "segments": len(part)}
    return {
        "cache": str(cache.root),
        "source": str(cfg.data.source),
        "source_path": local_source(cfg.data.source),  # same_source.py compares it
        "codec": cache.info()["codec"],
        "files_ok": len(files),
        "files_skipped": len(skipped),
        "files_encoded": counts["encoded"],
        "files_reused": counts["reused"],
        "segments_encoded": counts["segments_encoded"],
        "segments_reused": len(entries) - counts["segments_encoded"],
        "skipped": skipped,
        "removed": removed,
        "adjusted": _adjusted(entries),
        "warnings": _file_notes(entries, "file_warning"),
        "totals": {
            "hours": round(sum(f.duration for f in files) / 3600, 6),
            "segments": len(entries),
            "frames": sum(e["frames"] for e in entries),
            "tokens": tokens,
        },
        "splits": splits,
        "captions": _caption_counts(entries),
    }


def _caption_counts(entries: list[dict]) -> dict:
    """How many files share each caption: a model cannot learn from text that does not differ
    (a folder without metadata captions every file data.caption.default)."""
    counts = Counter(e.get("caption", "") for e in entries if e["segment"] == 0)
    return {"distinct": len(counts), "most_common": [[c, n] for c, n in counts.most_common(3)]}


def _adjusted(entries: list[dict]) -> list[dict]:
    """Files whose audio was changed on its way to the codec (louder than full scale)."""
    out = []
    for entry in entries:
        gain = entry.get("file_gain", 1.0)
        if entry["segment"] == 0 and gain < 1.0:
            decibels = -20 * np.log10(gain)
            reason = f"peak +{decibels:.1f} dBFS, above full scale: scaled down {decibels:.1f} dB"
            out.append({"path": entry.get("origin", entry["source"]), "reason": reason})
    return sorted(out + _file_notes(entries, "file_adjusted"), key=lambda a: a["path"])


def _file_notes(entries: list[dict], field: str) -> list[dict]:
    """One line per file whose first segment carries a note (truncated, decoder messages)."""
    return sorted(
        ({"path": e.get("origin", e["source"]), "reason": e[field]} for e in entries
         if e["segment"] == 0 and e.get(field)),
        key=lambda a: a["path"],
    )  # fmt: skip


def log_summary(report: dict) -> None:
    totals = report["totals"]
    log.info(
        "prepared %d file(s) (%d encoded, %d unchanged), skipped %d; %.3f h of audio, "
        "%d segments, %d tokens -> %s",
        report["files_ok"],
        report["files_encoded"],
        report["files_reused"],
        report["files_skipped"],
        totals["hours"],
        totals["segments"],
        totals["tokens"],
        report["cache"],
    )
    common = report.get("captions", {}).get("most_common")
    if common and report["files_ok"] >= 4 and common[0][1] > report["files_ok"] / 2:
        log.warning(
            "%d of %d files have the same caption %r: training cannot learn from the text what "
            "sets them apart; give them captions (metadata.jsonl, sidecars: see docs/data.md)",
            common[0][1], report["files_ok"], common[0][0],
        )  # fmt: skip
    for item in report["skipped"]:
        log.warning("skipped %s: %s", item["path"], item["reason"])
    for item in report["removed"]:
        log.info("removed %s: %s", item["path"], item["reason"])
    for item in report.get("adjusted", []):
        log.warning("adjusted %s: %s", item["path"], item["reason"])
    for item in report.get("warnings", []):
        log.warning("warning %s: %s", item["path"], item["reason"])
