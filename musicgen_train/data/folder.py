"""A folder of audio files, with captions from metadata tables or sidecars.

Caption metadata of a file in a folder comes from the first of: a row of ``metadata.jsonl`` or
``metadata.csv`` (Hugging Face audiofolder convention: ``file_name`` plus columns), a sidecar
``<name>.json`` (audiocraft's music-info fields), a sidecar ``<name>.txt`` (the description),
or nothing (then the description is ``data.caption.default``).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterator
from pathlib import Path

from musicgen_train.audio import AUDIO_EXTENSIONS, UNSUPPORTED_AUDIO, unsupported_reason
from musicgen_train.data.items import AudioItem, SkippedItem
from musicgen_train.data.metadata import (
    _jsonl_rows,
    _sidecar_metadata,
    normalize_metadata,
    read_text,
)
from musicgen_train.data.paths import file_identity, file_problem, on_disk

Item = AudioItem | SkippedItem
METADATA_FILES = ("metadata.jsonl", "metadata.csv")


def _is_audio_name(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_EXTENSIONS


def _resolve(path: Path) -> Path:
    """The real path (a symlink loop cannot be resolved: then the path as it is, absolute)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return path.absolute()


def _walk(root: Path, skipped: list[SkippedItem]) -> list[Path]:
    """Every entry below ``root`` that is not a folder, in a stable order, hidden files and
    folders left out. Real folders are read first, then links to folders, each real folder
    once (a link back up the tree, or to a folder already read, is reported, never looped); a
    folder that cannot be listed, and a folder with an audio name, are reported in ``skipped``."""
    found: list[Path] = []
    seen: dict[tuple[int, int], Path] = {}
    links: list[Path] = []  # links to folders, followed once every real folder is known

    def visit(folder: Path) -> None:
        try:
            info = os.stat(folder)
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as err:
            reason = f"the folder cannot be listed: {err.strerror or err}"
            skipped.append(SkippedItem(source=str(folder), reason=reason))
            return
        seen[(info.st_dev, info.st_ino)] = folder
        for entry in entries:
            path = folder / entry.name
            if entry.name.startswith("."):
                continue
            try:
                is_folder = entry.is_dir()  # follows links
            except OSError:
                is_folder = False
            if not is_folder:
                found.append(path)
            elif entry.is_symlink():
                links.append(path)
            else:
                if _is_audio_name(path):
                    skipped.append(SkippedItem(source=str(path), reason=_FOLDER_WITH_AUDIO_NAME))
                visit(path)

    visit(root)
    while links:
        links.sort()
        link = links.pop(0)
        identity = file_identity(link)
        if identity in seen:
            reason = f"a link to a folder already read ({seen[identity]}): not read twice"
            skipped.append(SkippedItem(source=str(link), reason=reason))
        else:
            visit(link)
    return sorted(found)


_FOLDER_WITH_AUDIO_NAME = "a folder, not an audio file (the files inside it are read on their own)"


def _keepers(root: Path, audio: list[Path]) -> dict[Path, Path]:
    """``path -> the path it is read under``: a file reached by several names (symlinks, hard
    links) is read once, under its first name with no link inside the folder (else its first)."""
    real_root = _resolve(root)
    by_file: dict[tuple[int, int], list[Path]] = {}
    for path in audio:
        identity = file_identity(path)
        if identity is not None:
            by_file.setdefault(identity, []).append(path)
    keepers = {}
    for paths in by_file.values():
        direct = [p for p in paths if _resolve(p) == real_root / p.relative_to(root)]
        for path in paths:
            keepers[path] = (direct or paths)[0]
    return keepers


def iter_folder(root: Path) -> Iterator[Item]:
    """Every audio file below ``root`` (nested folders too) with its caption metadata; each file
    once, however many links lead to it; every path with an audio name that is not a readable
    file (a symlink loop, a dangling link, a FIFO, a device, no permission) with its reason."""
    root = Path(root)
    skipped: list[SkippedItem] = []
    files = _walk(root, skipped)
    yield from skipped
    table: dict[Path, tuple[dict, str]] = {}  # audio file -> (metadata, "metadata.jsonl:line")
    for metadata_file in (f for f in files if f.name in METADATA_FILES):
        problem = file_problem(metadata_file)
        if problem:  # a FIFO named metadata.jsonl must not hang the run
            yield SkippedItem(source=str(metadata_file), reason=problem)
            continue
        yield from _read_metadata_table(metadata_file, table)
    keepers = _keepers(root, [f for f in files if _is_audio_name(f)])
    for path in files:
        if keepers.get(path, path) != path:
            table.pop(_resolve(path), None)
            first = keepers[path].relative_to(root).as_posix()
            reason = f"the same file as {first} (a link to it): read once, as {first}"
            yield SkippedItem(source=str(path), reason=reason)
            continue
        row = table.pop(_resolve(path), None)
        if path.suffix.lower() in UNSUPPORTED_AUDIO:
            yield SkippedItem(source=str(path), reason=unsupported_reason(path.suffix))
            continue
        if not _is_audio_name(path):  # sidecars, metadata tables, cover art, notes
            if row:
                reason = f"{path.name} does not have an audio extension {AUDIO_EXTENSIONS}"
                yield SkippedItem(source=row[1], reason=reason)
            continue
        problem = file_problem(path)
        if problem:
            yield SkippedItem(source=str(path), reason=problem)
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
        audio = _resolve(on_disk(metadata_file.parent / name.strip()))
        if not os.path.lexists(audio) and "\\" in name:  # written on Windows: audio\\a.wav
            audio = _resolve(on_disk(metadata_file.parent / name.strip().replace("\\", "/")))
        if not os.path.lexists(audio):  # other problems are reported with the file itself
            yield SkippedItem(source=where, reason=f"file_name {name!r} does not exist")
            continue
        if audio in table:
            yield SkippedItem(source=where, reason=f"file_name {name!r} is listed twice")
            continue
        table[audio] = (normalize_metadata(row), where)


def _metadata_rows(path: Path) -> Iterator[tuple[int, dict | str]]:
    """(line number, row) for each data line; a str row is why the line is unusable."""
    try:
        text = read_text(path)
    except (OSError, UnicodeDecodeError) as err:
        yield 0, f"cannot read {path.name}: {err}"
        return
    if path.suffix == ".csv":
        reader = _csv_reader(text)
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


def _csv_reader(text: str) -> csv.DictReader:
    """Rows of a metadata.csv. Excel writes ``;`` between cells where the decimal mark is a
    comma (most of Europe), and tab-separated tables are common too: the separator is the one
    that finds a file_name column in the header. Header cells are stripped (``file_name,
    genre`` has a genre column)."""
    first = text.split("\n", 1)[0]
    delimiter = next(
        (d for d in (",", ";", "\t") if "file_name" in (c.strip(' "') for c in first.split(d))),
        ",",
    )
    # newline="": quoted cells may span lines
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    if reader.fieldnames:
        reader.fieldnames = [name.strip() for name in reader.fieldnames]
    return reader
