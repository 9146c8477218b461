"""The segments an earlier prepare encoded, looked up for this one (``prepare.py``)."""

from __future__ import annotations

from collections import defaultdict


class KnownSegments:
    """The segments the cache holds for this run's settings, by file key and by content: a file
    that was moved or renamed (or a manifest whose keys changed) is found by its bytes and its
    codes are reused, not encoded again."""

    def __init__(self, entries: list[dict], settings: str):
        self.by_key: dict[str, list[dict]] = defaultdict(list)
        self.by_content: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
        for entry in (e for e in entries if e["settings"] == settings):
            self.by_key[entry["key"]].append(entry)
            self.by_content[entry["content_hash"]][entry["key"]].append(entry)

    def previous(self, key: str) -> list[dict]:
        return self.by_key.get(key, [])

    def done(self, key: str, digest: str, previous: list[dict]) -> list[dict]:
        """The segments of ``digest`` already encoded: under ``key`` (maybe only some, after a
        kill), else all of them under another key, else none."""
        done = sorted((e for e in previous if e["content_hash"] == digest), key=segment_of)
        if complete(done):
            return done
        for other, entries in sorted(self.by_content.get(digest, {}).items()):
            if other != key and complete(entries := sorted(entries, key=segment_of)):
                return entries
        return done


def segment_of(entry: dict) -> int:
    return entry["segment"]


def complete(entries: list[dict]) -> bool:
    return bool(entries) and len(entries) == entries[0]["file_segments"]
