"""A folder of audio files, with captions from metadata tables or sidecars.

Caption metadata of a file in a folder comes from the first of: a row of ``metadata.jsonl`` or
``metadata.csv`` (Hugging Face audiofolder convention: ``file_name`` plus columns), a sidecar
``<name>.json`` (audiocraft's music-info fields), a sidecar ``<name>.txt`` (the description),
or nothing (then the description is ``data.caption.default``).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path

from musicgen_train.data.audio import AUDIO_EXTENSIONS
from musicgen_train.data.items import AudioItem, SkippedItem
from musicgen_train.data.metadata import _jsonl_rows, _sidecar_metadata, normalize_metadata

Item = AudioItem | SkippedItem
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
# Audio that libsndfile cannot read: reported, so that nothing vanishes without a word.
UNSUPPORTED_AUDIO = (".m4a", ".aac", ".wma", ".mp4", ".ape", ".alac", ".webm")


def _is_audio_name(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_EXTENSIONS


def _walk(root: Path) -> Iterator[Path]:
    """Every file below ``root`` in a stable order, hidden files and folders left out."""
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            yield path


def iter_folder(root: Path) -> Iterator[Item]:
    """Every audio file below ``root`` (nested folders too) with its caption metadata."""
    root = Path(root)
    files = list(_walk(root))
    table: dict[Path, tuple[dict, str]] = {}  # audio file -> (metadata, "metadata.jsonl:line")
    for metadata_file in (f for f in files if f.name in METADATA_FILES):
        yield from _read_metadata_table(metadata_file, table)
    for path in files:
        row = table.pop(path.resolve(), None)
        if path.suffix.lower() in UNSUPPORTED_AUDIO:
            reason = f"{path.suffix} cannot be read with libsndfile: convert it to flac or wav"
            yield SkippedItem(source=str(path), reason=reason)
            continue
        if not _is_audio_name(path):  # sidecars, metadata tables, cover art, notes
            if row:
                reason = f"{path.name} does not have an audio extension {AUDIO_EXTENSIONS}"
                yield SkippedItem(source=row[1], reason=reason)
            continue
        try:
            metadata = row[0] if row else _sidecar_metadata(path) or {}
        except ValueError as err:
            yield SkippedItem(source=str(path), reason=str(err))
            continue
        key = path.relative_to(root).as_posix()
        yield AudioItem(key=key, source=str(path), path=path, metadata=metadata)
    for audio, (_metadata, where) in table.items():  # rows naming files elsewhere
        yield SkippedItem(source=where, reason=f"{audio} is not inside {root} (or is hidden)")


def _read_metadata_table(
    metadata_file: Path, table: dict[Path, tuple[dict, str]]
) -> Iterator[SkippedItem]:
    """Fill ``table`` (resolved audio path -> metadata, line) from one metadata.jsonl / .csv; a
    row that cannot be used becomes a SkippedItem naming the file and line."""
    for line, row in _metadata_rows(metadata_file):
        where = f"{metadata_file}:{line}"
        if isinstance(row, str):  # the reason the line could not be parsed
            yield SkippedItem(source=where, reason=row)
            continue
        name = row.pop("file_name", None)
        if not isinstance(name, str) or not name.strip():
            yield SkippedItem(source=where, reason="the row has no file_name")
            continue
        audio = (metadata_file.parent / name.strip()).resolve()
        if not audio.is_file():
            yield SkippedItem(source=where, reason=f"file_name {name!r} does not exist")
            continue
        if audio in table:
            yield SkippedItem(source=where, reason=f"file_name {name!r} is listed twice")
            continue
        table[audio] = (normalize_metadata(row), where)


def _metadata_rows(path: Path) -> Iterator[tuple[int, dict | str]]:
    """(line number, row) for each data line; a str row is why the line is unusable."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        yield 0, f"cannot read {path.name}: {err}"
        return
    if path.suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))  # quoted cells may span lines
        if not reader.fieldnames or "file_name" not in reader.fieldnames:
            yield 1, f"{path.name} has no file_name column (columns: {reader.fieldnames})"
            return
        for row in reader:
            if None in row:  # more cells than header columns
                yield reader.line_num, f"the row has more cells than the {path.name} header"
            else:
                yield reader.line_num, {k: v for k, v in row.items() if k}
        return
    yield from _jsonl_rows(text.splitlines())
