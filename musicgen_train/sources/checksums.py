"""sha256 of every file of a model folder, written at export and checked before every load.

A model that was truncated by a failed copy or edited by hand is refused with an error that names
the file, instead of loading into a model that quietly generates noise.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from musicgen_train.errors import UserError

CHECKSUM_FILE = "checksums.json"
_CHUNK = 1 << 20


class ChecksumError(UserError):
    """A model folder whose files do not match its checksums.json."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _model_files(folder: Path) -> list[Path]:
    """Every file below ``folder`` except the checksum file itself, in a stable order."""
    files = (p for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUM_FILE)
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def compute_checksums(folder: Path) -> dict[str, dict]:
    files = {}
    for path in _model_files(folder):
        entry = {"sha256": sha256_file(path), "size": path.stat().st_size}
        files[path.relative_to(folder).as_posix()] = entry
    return files


def write_checksums(folder: Path) -> dict[str, dict]:
    """Record the checksum of every file of ``folder`` in ``folder/checksums.json``."""
    files = compute_checksums(folder)
    record = {"algorithm": "sha256", "files": files}
    (folder / CHECKSUM_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return files


def file_digests(folder: Path) -> dict[str, str]:
    """``{file: sha256}`` of the folder's own record: what export copies into the registry."""
    return {name: entry["sha256"] for name, entry in _read_record(Path(folder)).items()}


def verify_against_record(folder: Path, recorded: dict[str, str], where: str) -> None:
    """Compare every file of ``folder`` with digests recorded elsewhere (``where``, e.g. the
    registry at export), so a folder whose files and checksums.json were both rewritten is
    refused: its own record proves consistency, this one authenticity."""
    folder = Path(folder)
    present = {p.relative_to(folder).as_posix() for p in _model_files(folder)}
    for name in sorted(set(recorded) | present):
        if name not in present:
            raise ChecksumError(f"model folder {folder} is incomplete: {name} is missing")
        if name not in recorded:
            raise ChecksumError(f"model file {folder / name} is not among the files {where}")
        if sha256_file(folder / name) != recorded[name]:
            raise ChecksumError(
                f"model file {folder / name} does not match the sha256 {where}: it was "
                "rewritten after export; download or export the model again"
            )


def has_checksums(folder: Path) -> bool:
    return (Path(folder) / CHECKSUM_FILE).is_file()


def _read_record(folder: Path) -> dict[str, dict]:
    path = folder / CHECKSUM_FILE
    if not path.is_file():
        raise ChecksumError(f"model folder {folder} has no {CHECKSUM_FILE}: it cannot be verified")
    try:
        record = json.loads(path.read_text())
        files = record["files"]
        if record.get("algorithm") != "sha256" or not isinstance(files, dict):
            raise ValueError("not a sha256 record")
    except (ValueError, KeyError, TypeError) as err:
        raise ChecksumError(f"{path} is corrupt ({err}): the model cannot be verified") from err
    return files


def verify_checksums(folder: Path) -> None:
    """Raise ChecksumError naming the first file that is missing, truncated, altered or extra."""
    folder = Path(folder)
    expected = _read_record(folder)
    for name, entry in sorted(expected.items()):
        path = folder / name
        if not path.is_file():
            raise ChecksumError(f"model folder {folder} is incomplete: {name} is missing")
        size = path.stat().st_size
        if size != entry.get("size"):
            raise ChecksumError(
                f"model file {path} has {size} bytes instead of {entry.get('size')}: "
                "it is truncated or altered; export or download the model again"
            )
        if sha256_file(path) != entry.get("sha256"):
            raise ChecksumError(
                f"model file {path} does not match its sha256 in {CHECKSUM_FILE}: it was altered; "
                "export or download the model again"
            )
    extra = [p.relative_to(folder).as_posix() for p in _model_files(folder)]
    extra = [name for name in extra if name not in expected]
    if extra:
        raise ChecksumError(
            f"model folder {folder} holds files that are not in {CHECKSUM_FILE}: {extra}"
        )
