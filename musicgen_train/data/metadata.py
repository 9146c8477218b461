"""Caption metadata shared by the sources: rows, sidecars and jsonl lines, as plain fields."""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

# Columns that hold a ready caption: they become the "description" field.
TEXT_COLUMNS = ("description", "text", "caption", "prompt")


def normalize_metadata(row: Mapping, text_column: str | None = None) -> dict:
    """Keep usable caption fields: drop empty values, and move a ready caption column
    (the configured one, else ``text``, ``caption`` or ``prompt`` when there is no
    ``description``) to ``description``."""
    metadata = {k: v for k, v in row.items() if _present(v)}
    if text_column:  # chosen by the user: it is the description
        if text_column in metadata:
            metadata["description"] = metadata.pop(text_column)
        return metadata
    column = next((c for c in TEXT_COLUMNS if c in metadata), None)
    if column and "description" not in metadata:
        metadata["description"] = metadata.pop(column)
    return metadata


def _present(value) -> bool:
    if value is None:
        return False
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, list | tuple):
        return any(_present(v) for v in value)
    return isinstance(value, int | float | bool)


_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
         (codecs.BOM_UTF16_BE, "utf-16"))  # fmt: skip


_UTF8_SEQUENCE = re.compile(rb"[\xc2-\xf4][\x80-\xbf]+")  # "é" in UTF-8 reads "Ã©" in cp1252


def read_text(path: Path) -> str:
    """A caption file's text, in the encodings people's tools write: UTF-8 with or without the
    byte order mark Windows editors put first, UTF-16 with its BOM (Notepad's "Unicode"), else
    Windows-1252 (Latin-1 and what Excel's plain CSV and older Notepad save), so that "café"
    is not lost to an encoding. Raises UnicodeDecodeError (a ValueError) when the bytes are
    none of these, or decode to control characters (binary data, not text); OSError as read."""
    raw = path.read_bytes()
    encoding = next((name for bom, name in _BOMS if raw.startswith(bom)), None)
    if encoding:
        return raw.decode(encoding)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        text = raw.decode("cp1252", errors="replace")
        unsure = _UTF8_SEQUENCE.search(raw)  # UTF-8 with a broken byte: cp1252 would garble it
        if unsure or any(c == "\ufffd" or (ord(c) < 32 and c not in "\t\r\n") for c in text):
            raise err from None  # not text in any encoding we can be sure of
        return text


def _read_json_object(path: Path) -> dict:
    """A sidecar json; raises ValueError with the file and the reason."""
    try:
        value = json.loads(read_text(path))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"sidecar {path.name} is not valid JSON ({err})") from err
    if not isinstance(value, dict):
        raise ValueError(f"sidecar {path.name} holds a {type(value).__name__}, not an object")
    return value


def _sidecar(audio: Path, suffix: str) -> Path | None:
    """``song.wav.json`` / ``song.wav.txt`` (the audio's whole name, as tagging tools and
    dataset scripts write them), else ``song.json`` / ``song.txt``, next to the audio; each also
    as ``.JSON`` / ``.TXT``, as Windows and older recorders name them (their file systems ignore
    case). The whole name wins: ``song.txt`` may be meant for ``song.mp3`` as well."""
    suffixes = (suffix, suffix.upper())
    whole_name = [audio.with_name(audio.name + s) for s in suffixes]
    return next((p for p in whole_name + [audio.with_suffix(s) for s in suffixes] if p.is_file()),
                None)  # fmt: skip


def _sidecar_metadata(audio: Path, info_path: Path | None = None) -> dict | None:
    """Metadata from ``<name>.json`` (music info) or ``<name>.txt`` (the description)."""
    json_path = info_path or _sidecar(audio, ".json")
    if json_path is not None and json_path.is_file():
        return normalize_metadata(_read_json_object(json_path))
    txt_path = _sidecar(audio, ".txt")
    if txt_path is not None:
        try:
            text = read_text(txt_path).strip()
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"sidecar {txt_path.name} is not readable text ({err})") from err
        return {"description": text} if text else {}
    return None


def _jsonl_rows(lines: list[str]) -> Iterator[tuple[int, dict | str]]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            yield number, f"not valid JSON: {err.msg} (column {err.colno})"
            continue
        if isinstance(row, dict):
            yield number, row
        else:
            yield number, f"a JSON {type(row).__name__}, not an object"
