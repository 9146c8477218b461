"""What a data source yields: one audio file (or in-memory clip) with its caption metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class AudioItem:
    key: str  # stable identity within the source, e.g. the path relative to the folder
    source: str  # where it came from, as the report should name it
    path: Path | None = None  # a file to decode ...
    data: bytes | None = None  # ... or the encoded bytes (HF datasets)
    # Caption fields: description, genre, moods, keywords, instrument, bpm, key, title, artist,
    # or a ready "text"; whatever the source knew.
    metadata: dict = field(default_factory=dict)


@dataclass
class SkippedItem:
    source: str
    reason: str
