"""Write a Hugging Face model folder all at once or not at all.

The folder is filled under a hidden temporary name next to its destination and renamed into
place only when every file and its checksum are written, so a crash half-way never leaves a
half-written model where a complete one is expected.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from safetensors import SafetensorError

from musicgen_train.errors import UserError
from musicgen_train.sources.checksums import (
    ChecksumError,
    has_checksums,
    verify_checksums,
    write_checksums,
)

log = logging.getLogger(__name__)


@contextmanager
def atomic_folder(dest: Path) -> Iterator[Path]:
    """Yield an empty folder that replaces ``dest`` only if the block succeeds.

    The folder has ``dest``'s name inside a hidden sibling staging folder, so anything that
    copies it by name (MLflow artifacts) sees the final name. A file system that refuses the
    writes (full, read-only, a file in the way) is one line naming ``dest``.
    """
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        clean_leftovers(dest)
        staging = Path(
            tempfile.mkdtemp(prefix=f".{dest.name}.partial-{os.getpid()}-", dir=dest.parent)
        )
    except OSError as err:
        raise FolderWriteError(_write_failure(dest, err)) from err
    folder = staging / dest.name
    try:
        folder.mkdir()
        yield folder
        _replace(folder, dest)
    except (OSError, SafetensorError) as err:
        raise FolderWriteError(_write_failure(dest, err)) from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class FolderWriteError(UserError):
    """A model folder that the file system would not let us write; nothing was left behind."""


def _write_failure(dest: Path, err: Exception) -> str:
    what = " ".join(str(err).split())
    if isinstance(err, OSError) and err.strerror:
        what = f"{err.strerror}: {err.filename}" if err.filename else err.strerror
    return (
        f"cannot write the model folder {dest} ({what}): free disk space, or choose a writable "
        "place for it; nothing was written"
    )


def check_output_folder(dest: Path, key: str) -> Path:
    """Refuse, before any slow work, an output that is not ours to replace: a file, or a folder
    holding anything but an earlier model (one with checksums.json). Replacing it would delete
    the user's files."""
    dest = Path(dest)
    try:
        taken = dest.exists() and (
            not dest.is_dir() or (any(dest.iterdir()) and not has_checksums(dest))
        )
    except OSError as err:  # a name too long, a folder we may not read
        raise UserError(f"{key}={dest} cannot be used: {err.strerror or err}") from err
    if taken:
        raise UserError(
            f"{key}={dest} already exists and is not a model folder (no checksums.json): "
            "give a new or empty folder (an earlier export there is replaced)"
        )
    blocker = next((p for p in dest.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise UserError(f"{key}={dest} cannot be created: {blocker} is a file, not a folder")
    return dest


def clean_leftovers(dest: Path) -> list[Path]:
    """Remove what a killed writer of ``dest`` left beside it (staging folders, a moved-aside
    old copy), and put the old copy back if the kill came between the two renames. Only
    leftovers of processes that are gone are touched: another live writer keeps its own."""
    dest = Path(dest)
    removed = []
    for kind in ("old", "partial"):  # old first: it may be the only copy of ``dest``
        for path in sorted(dest.parent.glob(f".{dest.name}.{kind}-*")):
            if not _writer_is_gone(path.name.removeprefix(f".{dest.name}.{kind}-")):
                continue
            if kind == "old" and not dest.exists():
                path.rename(dest)  # killed between the renames: the old folder is the model
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _writer_is_gone(suffix: str) -> bool:
    pid = suffix.split("-", 1)[0]
    if not pid.isdigit():
        return True  # written before names carried the writer's pid
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _replace(new: Path, dest: Path) -> None:
    # rename() is atomic within one file system; an older folder is moved aside first and only
    # deleted once the new one is in place.
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    if dest.exists():
        dest.rename(old)
    try:
        new.rename(dest)
    except BaseException:
        if old.exists():
            old.rename(dest)
        raise
    shutil.rmtree(old, ignore_errors=True)


def verified_conversion(folder: Path, source: Path) -> Path | None:
    """``folder`` when it holds a complete, verified earlier conversion of ``source``; a damaged
    one is said in a line and converted again (None)."""
    if not has_checksums(folder):
        return None
    try:
        verify_checksums(folder)
        return folder
    except ChecksumError as err:
        log.warning("converting %s again: %s", source, err)
        return None


def set_generation_defaults(model, defaults: Mapping) -> None:
    """Store guidance and sampling defaults in the model's generation config.

    transformers' ``generate`` then uses them when a caller passes nothing else.
    """
    config = model.generation_config
    frames = round(float(defaults["duration"]) * float(model.config.audio_encoder.frame_rate))
    config.do_sample = True
    config.guidance_scale = float(defaults["guidance_scale"])
    config.temperature = float(defaults["temperature"])
    config.top_k = int(defaults["top_k"])
    config.top_p = float(defaults["top_p"]) if defaults["top_p"] > 0 else 1.0
    # One start token plus the delay pattern's num_codebooks - 1 steps come on top of the frames.
    config.max_length = frames + int(model.config.decoder.num_codebooks)
    decoder = model.config.decoder  # melody decoders start with their bos token
    config.decoder_start_token_id = getattr(decoder, "decoder_start_token_id", decoder.bos_token_id)
    config.pad_token_id = model.config.decoder.pad_token_id


def save_model_folder(folder: Path, model, processor, *, readme: str | None = None) -> None:
    """Model (safetensors), processor and model card, then the checksums of everything there."""
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    if readme is not None:
        (folder / "README.md").write_text(readme)
    _default_permissions(folder)
    write_checksums(folder)
    verify_checksums(folder)  # proves the record matches what is on disk before anyone uses it


def _default_permissions(folder: Path) -> None:
    """safetensors writes its file through a private (0600) temporary file: give every file the
    mode ``open()`` would have given it, so that a service running as another user (a container,
    a shared registry) can read the model."""
    mask = _umask()
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(0o666 & ~mask)


def _umask() -> int:
    # Read where the system says it (Linux): setting it to read it back would, for a moment,
    # give files other threads create at that instant no mask at all.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask
