"""Caption metadata shared by the sources: rows, sidecars and jsonl lines, as plain fields."""

from __future__ import annotations

import json
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


def _read_json_object(path: Path) -> dict:
    """A sidecar json; raises ValueError with the file and the reason."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"sidecar {path.name} is not valid JSON ({err})") from err
    if not isinstance(value, dict):
        raise ValueError(f"sidecar {path.name} holds a {type(value).__name__}, not an object")
    return value


def _sidecar_metadata(audio: Path, info_path: Path | None = None) -> dict | None:
    """Metadata from ``<name>.json`` (music info) or ``<name>.txt`` (the description)."""
    json_path = info_path or audio.with_suffix(".json")
    if json_path.is_file():
        return normalize_metadata(_read_json_object(json_path))
    txt_path = audio.with_suffix(".txt")
    if txt_path.is_file():
        try:
            text = txt_path.read_text(encoding="utf-8").strip()
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
