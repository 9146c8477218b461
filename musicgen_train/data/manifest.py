"""An audiocraft manifest (``data.jsonl``): one line per audio file, metadata in sidecars."""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from pathlib import Path, PureWindowsPath

from musicgen_train.data.items import AudioItem, SkippedItem
from musicgen_train.data.metadata import _jsonl_rows, _sidecar_metadata, normalize_metadata
from musicgen_train.data.paths import file_identity, file_problem, on_disk
from musicgen_train.errors import UserError

Item = AudioItem | SkippedItem
MANIFEST_NAMES = ("data.jsonl", "data.jsonl.gz")


def iter_manifest(manifest: Path) -> Iterator[Item]:
    """audiocraft's ``data.jsonl``: ``{path, duration, sample_rate, amplitude, weight,
    info_path}`` per line; metadata from ``info_path`` or the sidecar ``<audio>.json``."""
    manifest = Path(manifest)
    opener = gzip.open if manifest.name.endswith(".gz") else open
    try:
        with opener(manifest, "rt", encoding="utf-8-sig") as handle:  # a BOM is not a line
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
            yield SkippedItem(source=where, reason=_no_path(row, manifest))
            continue
        audio = _manifest_path(manifest, row["path"])
        if not os.path.lexists(audio):
            yield SkippedItem(source=where, reason=_missing(row["path"]))
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
            metadata = _sidecar_metadata(audio, info_path) or _inline_metadata(row)
        except ValueError as err:
            yield SkippedItem(source=where, reason=str(err))
            continue
        identity = file_identity(audio)
        if identity in seen:  # the same file listed twice (or through a link): read once
            reason = f"path {row['path']!r} is the same file as line {seen[identity]}: read once"
            yield SkippedItem(source=where, reason=reason)
            continue
        seen[identity] = number
        # The key is the path as written, not the line: a line added above must not make every
        # file below it another file (each listed path is read once, so it is unique).
        yield AudioItem(key=row["path"], source=str(audio), path=audio, metadata=metadata)


# audiocraft's own keys of a line; any other key (description, genre, ...) is a caption field.
AUDIOCRAFT_KEYS = ("path", "duration", "sample_rate", "amplitude", "weight", "info_path")


def _inline_metadata(row: dict) -> dict:
    """Caption fields written into the line itself (``{"path": ..., "description": ...}``, as
    many scripts write them): used when the audio has no sidecar, rather than ignored."""
    return normalize_metadata({k: v for k, v in row.items() if k not in AUDIOCRAFT_KEYS})


def _no_path(row: dict, manifest: Path) -> str:
    if "file_name" in row:  # the audiofolder convention, in a file named like a manifest
        return (f"the line has no path, but a file_name: a folder's caption table is called "
                f"metadata.jsonl, not {manifest.name} (audiocraft manifests name each file "
                "in a path)")  # fmt: skip
    return "the line has no path"


def _missing(value: str) -> str:
    if PureWindowsPath(value).drive:
        return (f"path {value!r} does not exist: a Windows path; write the paths as this "
                "machine sees them, or relative to the manifest's folder")  # fmt: skip
    return f"path {value!r} does not exist"


def _manifest_path(manifest: Path, value: str) -> Path:
    """audiocraft writes absolute paths; relative ones are taken from the manifest's folder,
    then from the working directory. A relative path written on Windows (``audio\\a.wav``)
    is read with ``/`` when no file has its name with backslashes."""
    path = _local_path(manifest, value)
    if "\\" in value and not os.path.lexists(path) and not PureWindowsPath(value).drive:
        path = _local_path(manifest, value.replace("\\", "/"))
    return path


def _local_path(manifest: Path, value: str) -> Path:
    path = on_disk(Path(value).expanduser())
    if path.is_absolute():
        return path
    beside = on_disk(manifest.parent / path)
    return beside if beside.exists() or not path.exists() else path.resolve()
