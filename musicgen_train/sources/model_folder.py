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
    copies it by name (MLflow artifacts) sees the final name.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(dest)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-{os.getpid()}-", dir=dest.parent))
    folder = staging / dest.name
    folder.mkdir()
    try:
        yield folder
        _replace(folder, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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
    write_checksums(folder)
    verify_checksums(folder)  # proves the record matches what is on disk before anyone uses it
