"""The token cache on disk: what training reads and what makes prepare incremental and resumable.

``<cache>/cache_info.json``   the codec that made the codes (a cache refuses any other codec)
``<cache>/manifest.jsonl``    one line per segment, written atomically when a prepare finishes
``<cache>/journal.jsonl``     lines of the shards finished by a prepare still running (or killed)
``<cache>/shards/*.npy``      int16 codes ``[segments, num_codebooks, frames]``, zero-padded to
                              the longest segment of the shard; a line's ``frames`` is its length
``<cache>/prepare_report.json``

A shard is written to a temporary file and renamed into place, then its lines go to the
journal: a kill at any moment leaves either a finished shard that the journal knows, or a file
nobody references (removed on the next run). So a re-run loses nothing and redoes nothing.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from musicgen_train.errors import UserError

FORMAT_VERSION = 1


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, value) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def read_jsonl(path: Path) -> list[dict]:
    """Lines of a jsonl file; a torn last line (a kill mid-write) is ignored, nothing else is."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    entries = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):
                break
            raise UserError(f"{path}:{number} is not valid JSON ({err.msg})") from err
    return entries


class TokenCache:
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        self.info_path = self.root / "cache_info.json"
        self.manifest_path = self.root / "manifest.jsonl"
        self.journal_path = self.root / "journal.jsonl"
        self.report_path = self.root / "prepare_report.json"
        self.shards_dir = self.root / "shards"
        self.sources_dir = self.root / "sources"  # audio that came as bytes, kept as files

    # --- codec identity --------------------------------------------------------------------

    def info(self) -> dict | None:
        return json.loads(self.info_path.read_text()) if self.info_path.exists() else None

    def open_for(self, codec: dict, *, overwrite: bool = False) -> None:
        """Make the cache ready for codes of ``codec``; refuse codes of another one."""
        info = self.info()
        if overwrite and (info is not None or self.shards_dir.exists()):
            self.clear()
            info = None
        if info is not None and info.get("codec") != codec:
            raise UserError(self._other_codec_message(info.get("codec") or {}, codec))
        self.shards_dir.mkdir(parents=True, exist_ok=True)
        if info is None:
            atomic_write_json(self.info_path, {"format": FORMAT_VERSION, "codec": codec})

    def _other_codec_message(self, old: dict, new: dict) -> str:
        changed = ", ".join(
            f"{key} {old.get(key)!r} -> {new.get(key)!r}"
            for key in new
            if old.get(key) != new.get(key) and key != "weights_sha256"
        )
        if old.get("weights_sha256") != new.get("weights_sha256"):
            changed = ", ".join(filter(None, [changed, "codec weights differ"]))
        return (
            f"the token cache {self.root} was made by another codec ({changed}): choose a new "
            "data.output=<dir> or set data.overwrite=true to rebuild it"
        )

    def clear(self) -> None:
        """Remove what prepare wrote, and only that (data.output may hold other files)."""
        for path in (self.info_path, self.manifest_path, self.journal_path, self.report_path):
            path.unlink(missing_ok=True)
        shutil.rmtree(self.shards_dir, ignore_errors=True)
        shutil.rmtree(self.sources_dir, ignore_errors=True)

    # --- segments ----------------------------------------------------------------------------

    def manifest(self) -> list[dict]:
        return read_jsonl(self.manifest_path)

    def known_entries(self) -> list[dict]:
        """The manifest plus the journal of an unfinished run, each segment id once, and only
        segments whose shard exists."""
        entries = {e["id"]: e for e in [*self.manifest(), *read_jsonl(self.journal_path)]}
        return [e for e in entries.values() if (self.shards_dir / e["shard"]).exists()]

    def next_shard_number(self, entries: Iterable[dict]) -> int:
        numbers = [int(e["shard"].split("-")[1].split(".")[0]) for e in entries]
        return max(numbers, default=-1) + 1

    def write_shard(self, number: int, codes: list[np.ndarray]) -> str:
        """Write ``[K, frames]`` arrays as one padded int16 shard; returns its file name."""
        frames = max(c.shape[-1] for c in codes)
        block = np.zeros((len(codes), codes[0].shape[0], frames), dtype=np.int16)
        for i, c in enumerate(codes):
            block[i, :, : c.shape[-1]] = c
        name = f"shard-{number:06d}.npy"
        tmp = self.shards_dir / f".{name}.tmp{os.getpid()}"
        with open(tmp, "wb") as handle:
            np.save(handle, block)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.shards_dir / name)
        return name

    def append_journal(self, entries: list[dict]) -> None:
        with open(self.journal_path, "a") as handle:
            handle.write("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))
            handle.flush()
            os.fsync(handle.fileno())

    def commit(self, entries: list[dict]) -> None:
        """Write the final manifest, forget the journal, delete shards nobody references."""
        text = "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries)
        atomic_write_bytes(self.manifest_path, text.encode())
        self.journal_path.unlink(missing_ok=True)
        self.remove_unreferenced_shards(entries)
        kept = {e["source"] for e in entries}
        for path in self.sources_dir.glob("*") if self.sources_dir.exists() else ():
            if str(path) not in kept:
                path.unlink()

    def remove_unreferenced_shards(self, entries: Iterable[dict]) -> list[str]:
        used = {e["shard"] for e in entries}
        removed = []
        for path in sorted(self.shards_dir.glob("*")):
            if path.name not in used:
                path.unlink()
                removed.append(path.name)
        return removed


class ShardReader:
    """Reads segments' codes from memory-mapped shards (cheap to open in each worker)."""

    def __init__(self, root: str | Path):
        self.shards_dir = Path(root) / "shards"
        self._open: dict[str, np.ndarray] = {}

    def codes(self, entry: dict) -> np.ndarray:
        shard = self._open.get(entry["shard"])
        if shard is None:
            shard = np.load(self.shards_dir / entry["shard"], mmap_mode="r")
            self._open[entry["shard"]] = shard
        return np.asarray(shard[entry["index"], :, : entry["frames"]])

    def __getstate__(self):  # memory maps stay in the process that opened them
        return {"shards_dir": self.shards_dir, "_open": {}}
