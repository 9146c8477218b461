"""The token cache on disk: what training reads and what makes prepare incremental and resumable.

``<cache>/cache_info.json``   the codec that made the codes (a cache refuses any other codec)
``<cache>/manifest.jsonl``    one line per segment, written atomically when a prepare finishes
``<cache>/shards/*.npy``      int16 codes ``[segments, num_codebooks, frames]``, zero-padded to
                              the longest segment of the shard; a line's ``frames`` is its length
``<cache>/parts/*.npy``       the batches a prepare still running (or killed) has encoded, one
                              file per codec call ...
``<cache>/journal.jsonl``     ... and their lines, appended as each part lands
``<cache>/prepare_report.json``

A part is written to a temporary file and renamed into place, then its lines go to the journal
in one write: a kill -9 at any moment leaves finished parts that the journal knows, at most one
torn journal line and files nobody references (both dropped on the next run). So a killed
prepare loses only the segments in flight (the batch being encoded and the few segments waiting
for a batch), whatever ``data.shard_size`` is. When a prepare finishes, the parts are packed into
shards of ``data.shard_size`` in manifest order, so a resumed prepare writes the same shards and
the same manifest, byte for byte, as one that was never interrupted.
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
        self.parts_dir = self.root / "parts"
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
        shutil.rmtree(self.parts_dir, ignore_errors=True)
        shutil.rmtree(self.sources_dir, ignore_errors=True)

    # --- segments ----------------------------------------------------------------------------

    def manifest(self) -> list[dict]:
        return read_jsonl(self.manifest_path)

    def known_entries(self) -> list[dict]:
        """The manifest plus the journal of an unfinished run, each segment id once (the
        manifest's line wins), and only segments whose shard or part exists."""
        entries = {e["id"]: e for e in read_jsonl(self.journal_path) if "part" in e}
        entries.update({e["id"]: e for e in self.manifest()})
        return [e for e in entries.values() if self._codes_path(e).exists()]

    def _codes_path(self, entry: dict) -> Path:
        if "shard" in entry:
            return self.shards_dir / entry["shard"]
        return self.parts_dir / entry["part"]

    def recover(self) -> list[dict]:
        """Start a run: keep what an earlier (maybe killed) run finished, drop what it left
        half-done (a torn journal line, temporary files, shards and parts nobody references);
        returns the segments known to be finished."""
        known = self.known_entries()
        for folder in (self.root, self.shards_dir, self.parts_dir):
            for tmp in folder.glob(".*.tmp*") if folder.exists() else ():
                tmp.unlink(missing_ok=True)
        journaled = [e for e in known if "part" in e]
        if journaled or self.journal_path.exists():  # rewritten whole: no torn line stays
            text = "".join(json.dumps(e, sort_keys=True) + "\n" for e in journaled)
            atomic_write_bytes(self.journal_path, text.encode())
        self._remove_unused(self.parts_dir, {e["part"] for e in journaled})
        self.remove_unreferenced_shards(known)
        return known

    def next_part_number(self) -> int:
        numbers = [int(p.stem.split("-")[1]) for p in self.parts_dir.glob("part-*.npy")]
        return max(numbers, default=-1) + 1

    def write_part(self, number: int, codes: np.ndarray, entries: list[dict]) -> str:
        """Commit one encoded batch ``[segments, K, frames]``: the part file, then its lines in
        the journal (the entries get ``part`` and ``index``). Returns the part's name."""
        name = f"part-{number:06d}.npy"
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        _atomic_save(self.parts_dir / name, np.ascontiguousarray(codes, dtype=np.int16))
        for index, entry in enumerate(entries):
            entry.update(part=name, index=index)
        self.append_journal(entries)
        return name

    def write_shard(self, number: int, codes: list[np.ndarray]) -> str:
        """Write ``[K, frames]`` arrays as one padded int16 shard; returns its file name."""
        frames = max(c.shape[-1] for c in codes)
        block = np.zeros((len(codes), codes[0].shape[0], frames), dtype=np.int16)
        for i, c in enumerate(codes):
            block[i, :, : c.shape[-1]] = c
        name = f"shard-{number:06d}.npy"
        _atomic_save(self.shards_dir / name, block)
        return name

    def append_journal(self, entries: list[dict]) -> None:
        with open(self.journal_path, "a") as handle:
            handle.write("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))
            handle.flush()
            os.fsync(handle.fileno())

    def pack_parts(self, entries: list[dict], shard_size: int) -> None:
        """Move the codes of entries still in parts into new shards of ``shard_size``, in the
        entries' order (the manifest's), numbered after every shard on disk: a shard the current
        manifest names is never overwritten, and the same entries always give the same shards."""
        pending = [e for e in entries if "part" in e]
        numbers = [int(p.stem.split("-")[1]) for p in self.shards_dir.glob("shard-*.npy")]
        number = max(numbers, default=-1) + 1
        parts: dict[str, np.ndarray] = {}
        for start in range(0, len(pending), shard_size):
            chunk = pending[start : start + shard_size]
            codes = []
            for e in chunk:
                if e["part"] not in parts:
                    parts[e["part"]] = np.load(self.parts_dir / e["part"], mmap_mode="r")
                codes.append(np.asarray(parts[e["part"]][e["index"], :, : e["frames"]]))
            name = self.write_shard(number, codes)
            number += 1
            for index, e in enumerate(chunk):
                del e["part"]
                e.update(shard=name, index=index)

    def commit(self, entries: list[dict], shard_size: int = 256) -> None:
        """Pack the parts into shards, write the final manifest, forget the journal and the
        parts, delete shards nobody references."""
        self.pack_parts(entries, shard_size)
        text = "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries)
        atomic_write_bytes(self.manifest_path, text.encode())
        self.journal_path.unlink(missing_ok=True)
        self._remove_unused(self.parts_dir, set())
        self.remove_unreferenced_shards(entries)
        kept = {e["source"] for e in entries}
        for path in self.sources_dir.glob("*") if self.sources_dir.exists() else ():
            if str(path) not in kept:
                path.unlink()

    def remove_unreferenced_shards(self, entries: Iterable[dict]) -> list[str]:
        return self._remove_unused(self.shards_dir, {e["shard"] for e in entries if "shard" in e})

    @staticmethod
    def _remove_unused(folder: Path, used: set[str]) -> list[str]:
        removed = []
        for path in sorted(folder.glob("*")) if folder.exists() else ():
            if path.name not in used:
                path.unlink()
                removed.append(path.name)
        return removed


def _atomic_save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as handle:
        np.save(handle, array)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


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
