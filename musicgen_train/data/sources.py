"""Where training audio comes from: a folder, an audiocraft manifest, a Hugging Face dataset, demo.

``iter_source(data_cfg, work_dir)`` yields one ``AudioItem`` per audio file with its caption
metadata, or a ``SkippedItem`` naming what could not be used and why. It only discovers files and
metadata; decoding and validation happen in the prepare stage, so a corrupt file with an audio
name is still yielded and reported there.

Caption metadata of a file in a folder comes from the first of: a row of ``metadata.jsonl`` or
``metadata.csv`` (Hugging Face audiofolder convention: ``file_name`` plus columns), a sidecar
``<name>.json`` (audiocraft's music-info fields), a sidecar ``<name>.txt`` (the description),
or nothing (then the description is ``data.caption.default``).

One module per kind of source: ``folder.py``, ``manifest.py``, ``hf.py`` (and ``demo.py``);
``metadata.py`` holds what they share. This module picks one from the value of ``data.source``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from musicgen_train.data.folder import METADATA_FILES, UNSUPPORTED_AUDIO, iter_folder
from musicgen_train.data.hf import (
    _is_dataset_repo,
    _is_saved_hf_dataset,
    iter_hf_dataset,
    load_hf_dataset,
)
from musicgen_train.data.items import AudioItem, SkippedItem
from musicgen_train.data.manifest import MANIFEST_NAMES, iter_manifest
from musicgen_train.data.metadata import TEXT_COLUMNS, normalize_metadata
from musicgen_train.errors import UserError

__all__ = [
    "METADATA_FILES", "MANIFEST_NAMES", "TEXT_COLUMNS", "UNSUPPORTED_AUDIO", "iter_folder",
    "iter_hf_dataset", "iter_manifest", "iter_source", "load_hf_dataset", "normalize_metadata",
    "validate_source_config",
]  # fmt: skip
Item = AudioItem | SkippedItem


def iter_source(data_cfg: Mapping, work_dir: str | Path) -> Iterator[Item]:
    """Dispatch on ``data.source``: ``demo`` | folder | ``data.jsonl`` | HF dataset id or folder.
    A file without any metadata gets ``data.caption.default`` as its description, so that
    estimated tempo and key add to it ("jazz. 96 bpm, G major") rather than replace it."""
    items = _items(data_cfg, work_dir)  # a source that cannot be read fails here, at once
    default = str((data_cfg.get("caption") or {}).get("default") or "").strip()
    return _with_default_description(items, default) if default else items


def _with_default_description(items: Iterator[Item], default: str) -> Iterator[Item]:
    for item in items:
        if isinstance(item, AudioItem) and not item.metadata:
            item.metadata = {"description": default}
        yield item


def _items(data_cfg: Mapping, work_dir: str | Path) -> Iterator[Item]:
    source = str(data_cfg.get("source") or "").strip()
    if not source:
        raise UserError("data.source is empty: give a folder, a data.jsonl, a dataset id or demo")
    if source == "demo":
        from musicgen_train.data.demo import ensure_demo_folder

        seed = int(data_cfg.get("demo_seed") or 0)
        return iter_folder(ensure_demo_folder(Path(work_dir) / "demo_data" / f"seed{seed}", seed))
    path = Path(source).expanduser()
    if path.is_dir():
        if _is_saved_hf_dataset(path) or _is_dataset_repo(path):
            return iter_hf_dataset(data_cfg, path)
        manifest = next((path / n for n in MANIFEST_NAMES if (path / n).is_file()), None)
        return iter_manifest(manifest) if manifest else iter_folder(path)
    if path.is_file():
        if path.name.endswith((".jsonl", ".jsonl.gz")):
            return iter_manifest(path)
        raise UserError(
            f"data.source={source!r} is a file but not a .jsonl manifest: give a folder of "
            "audio, an audiocraft data.jsonl, a Hugging Face dataset or demo"
        )
    if source.startswith(("/", ".", "~")) or source.count("/") > 1 or path.suffix:
        raise UserError(f"data.source={source!r}: there is no such folder or file")
    return iter_hf_dataset(data_cfg, source)  # "name" or "owner/name": a hub dataset id


def validate_source_config(cfg) -> None:
    """Compose-time checks of ``data.source``, ``data.demo_seed`` and ``data.hf.*`` (called by
    ``musicgen_train.data.config``); whether the source exists is checked when it is read."""
    from omegaconf import OmegaConf

    from musicgen_train.errors import ConfigError

    source = OmegaConf.select(cfg, "data.source")
    if source is not None and not isinstance(source, str):
        raise ConfigError(
            f"data.source={source!r} is not allowed: give demo, a folder, a data.jsonl or a "
            "Hugging Face dataset id"
        )
    seed = OmegaConf.select(cfg, "data.demo_seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise ConfigError(f"data.demo_seed={seed!r} is not allowed: it must be a whole number")
    for key, optional in (("audio_column", False), ("text_column", True), ("split", False),
                          ("config_name", True)):  # fmt: skip
        value = OmegaConf.select(cfg, f"data.hf.{key}", default="<unset>")
        if value == "<unset>" or (optional and value is None):
            continue
        if not isinstance(value, str) or not value.strip():
            what = "a column name" if "column" in key else "a name"
            raise ConfigError(f"data.hf.{key}={value!r} is not allowed: give {what}")
    streaming = OmegaConf.select(cfg, "data.hf.streaming")
    if streaming is not None and not isinstance(streaming, bool):
        raise ConfigError(f"data.hf.streaming={streaming!r} is not allowed: give true or false")
