"""Any model source -> a folder or hub id that ``from_pretrained`` accepts, then loaded.

``source`` may be ``tiny``, ``tiny-stereo`` or ``tiny-melody`` (built locally), a hub id such as
``facebook/musicgen-small``, a local folder saved with ``save_pretrained``, a Lightning ``.ckpt``
or DeepSpeed checkpoint folder, an audiocraft fine-tune (a folder holding ``state_dict.bin``, or
a ``checkpoint.th``), or a registry URI (``models:/name@alias``, ``models:/name/3``). This module
is the only place that knows all of them; a new kind of source is a new branch of
``resolve_model_source``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from musicgen_train.model.codec import CodecFreeModel
from musicgen_train.model.codec import attach_codec as _attach_codec
from musicgen_train.model.codec import load_codec as _load_codec
from musicgen_train.model.codec import load_without_codec as _load_without_codec
from musicgen_train.model.loader import LoadedModel, ModelNotFoundError, load_pretrained
from musicgen_train.model.tiny_families import TINY_NAMES, ensure_tiny_family
from musicgen_train.sources.audiocraft import audiocraft_to_pretrained, is_audiocraft_source
from musicgen_train.sources.checkpoint import (
    CheckpointModel,
    PinnedCheckpoint,
    checkpoint_to_pretrained,
    load_checkpoint_model,
)
from musicgen_train.sources.checksums import has_checksums, verify_checksums
from musicgen_train.sources.registry_location import load_options


def resolve_model_source(
    source: str, *, tiny_seed: int = 0, registry_uri: str | None = None
) -> str:
    """Turn what the user wrote into something ``from_pretrained`` accepts (a folder or hub id)."""
    source = str(source)
    if source in TINY_NAMES:  # tiny, tiny-stereo, tiny-melody
        return str(ensure_tiny_family(source, seed=tiny_seed))
    if source.startswith("models:/"):
        from musicgen_train.sources.registry_uri import download_registry_model  # MLflow: lazy

        return str(download_registry_model(source, registry_uri))
    path = Path(source).expanduser()
    if path.suffix == ".ckpt" or (path.is_dir() and _is_lightning_checkpoint_dir(path)):
        return str(checkpoint_to_pretrained(path, load_base))
    if path.exists() and is_audiocraft_source(path):  # over the hub MusicGen of its shape
        options = {"tiny_seed": tiny_seed, "registry_uri": registry_uri}
        load = lambda base: load_musicgen(base, **options)  # noqa: E731
        return str(audiocraft_to_pretrained(path, load, salt=f"tiny_seed={tiny_seed}"))
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelNotFoundError(
                f"model folder {path} has no config.json: give a folder written by "
                "save_pretrained / musicgen-train export, a .ckpt file, or a hub id"
            )
        if has_checksums(path):  # an export: refuse it if a file was altered or truncated
            verify_checksums(path)
        return str(path)
    if source.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"model path {source} does not exist")
    return source  # a hub id


def _is_lightning_checkpoint_dir(path: Path) -> bool:
    # DeepSpeed writes a checkpoint as a folder holding a "checkpoint" subfolder and "latest".
    return (path / "latest").exists() or (path / "checkpoint").is_dir()


def load_musicgen(
    source: str,
    *,
    tiny_seed: int = 0,
    registry_uri: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> LoadedModel:
    """Model and processor of any source, or ModelNotFoundError with one clear line."""
    path = resolve_model_source(source, tiny_seed=tiny_seed, registry_uri=registry_uri)
    return load_pretrained(path, source=str(source), device=device, dtype=dtype)


def load_base(cfg) -> LoadedModel:
    """The base model a training config names (``model.id``), from any source."""
    return load_musicgen(str(cfg.model.id), **load_options(cfg))


def load_checkpoint(path: str | Path | PinnedCheckpoint) -> CheckpointModel:
    """A Lightning ``.ckpt`` or DeepSpeed folder (or a pinned one) rebuilt over its base model
    (LoRA unmerged, EMA kept apart), as export needs it."""
    pinned = isinstance(path, PinnedCheckpoint)
    return load_checkpoint_model(path if pinned else Path(path), load_base)


def load_without_codec(
    source: str, *, tiny_seed: int = 0, registry_uri: str | None = None
) -> CodecFreeModel:
    """Text encoder, decoder and projection of any source; the codec stays on disk."""
    path = resolve_model_source(source, tiny_seed=tiny_seed, registry_uri=registry_uri)
    return _load_without_codec(path, source=str(source))


def load_codec(source: str, *, tiny_seed: int = 0, registry_uri: str | None = None):
    path = resolve_model_source(source, tiny_seed=tiny_seed, registry_uri=registry_uri)
    return _load_codec(path)


def attach_codec(model, source: str, *, tiny_seed: int = 0, registry_uri: str | None = None):
    """Give ``model`` the real codec of ``source`` back (in place)."""
    path = resolve_model_source(source, tiny_seed=tiny_seed, registry_uri=registry_uri)
    return _attach_codec(model, path)
