"""An audiocraft manifest (``data.jsonl``): one line per audio file, metadata in sidecars."""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from pathlib import Path

from musicgen_train.data.items import AudioItem, SkippedItem
from musicgen_train.data.metadata import _jsonl_rows, _sidecar_metadata
from musicgen_train.data.paths import file_identity, file_problem
from musicgen_train.errors import UserError

Item = AudioItem | SkippedItem
MANIFEST_NAMES = ("data.jsonl", "data.jsonl.gz")


def iter_manifest(manifest: Path) -> Iterator[Item]:
    """audiocraft's ``data.jsonl``: ``{path, duration, sample_rate, amplitude, weight,
    info_path}`` per line; metadata from ``info_path`` or the sidecar ``<audio>.json``."""
    manifest = Path(manifest)
    opener = gzip.open if manifest.name.endswith(".gz") else open
    try:
        with opener(manifest, "rt", encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read the manifest {manifest}: {err}") from err
    seen: dict[tuple[int, int], int] = {}  # file -> the line that read it
    for number, row in _jsonl_rows(lines):
        where = f"{manifest}:{number}"
        if isinstance(row, str):
            yield SkippedItem(source=where, reason=row)
            continue
        if not isinstance(row.get("path"), str) or not row["path"].strip():
            yield SkippedItem(source=where, reason="the line has no path")
            continue
        audio = _manifest_path(manifest, row["path"])
        if not os.path.lexists(audio):
            yield SkippedItem(source=where, reason=f"path {row['path']!r} does not exist")
            continue
        problem = file_problem(audio)
        if problem:  # a FIFO, a device, a symlink loop, a dangling link, no permission
            yield SkippedItem(source=where, reason=f"path {row['path']!r}: {problem}")
            continue
        info = row.get("info_path")
        try:
            info_path = _manifest_path(manifest, info) if isinstance(info, str) and info else None
            if info_path is not None and not info_path.is_file():
                raise ValueError(f"info_path {info!r} does not exist")
            metadata = _sidecar_metadata(audio, info_path) or {}
        except ValueError as err:
            yield SkippedItem(source=where, reason=str(err))
            continue
        identity = file_identity(audio)
        if identity in seen:  # the same file listed twice (or through a link): read once
            reason = f"path {row['path']!r} is the same file as line {seen[identity]}: read once"
            yield SkippedItem(source=where, reason=reason)
            continue
        seen[identity] = number
        yield AudioItem(key=f"{number}:{row['path']}", source=str(audio), path=audio,
                        metadata=metadata)  # fmt: skip


def _manifest_path(manifest: Path, value: str) -> Path:
    """audiocraft writes absolute paths; relative ones are taken from the manifest's folder,
    then from the working directory."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    beside = manifest.parent / path
    return beside if beside.exists() or not path.exists() else path.resolve()
