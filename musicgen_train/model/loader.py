"""One loader for every place that needs a model: training, evaluate, notebooks, the service.

``source`` may be ``tiny`` (built locally), a hub id such as ``facebook/musicgen-small``, a local
folder saved with ``save_pretrained``, a Lightning checkpoint, or a registry URI
(``models:/name@alias``, ``models:/name/3``). Everything ends in ``from_pretrained``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf
from transformers import AutoProcessor, MusicgenForConditionalGeneration

from musicgen_train.errors import UserError
from musicgen_train.model.hub_access import hub_kwargs, hub_offline
from musicgen_train.model.tiny import ensure_tiny_model

log = logging.getLogger(__name__)


class ModelNotFoundError(UserError):
    """A model that cannot be found or loaded; the message is one line meant for the user."""


@dataclass
class LoadedModel:
    model: MusicgenForConditionalGeneration
    processor: object
    source: str  # what the user asked for
    path: str  # the folder or hub id that was finally loaded

    @property
    def sample_rate(self) -> int:
        return int(self.model.config.audio_encoder.sampling_rate)

    @property
    def frame_rate(self) -> float:
        return float(self.model.config.audio_encoder.frame_rate)


def resolve_model_source(
    source: str, *, tiny_seed: int = 0, registry_uri: str | None = None
) -> str:
    """Turn what the user wrote into something ``from_pretrained`` accepts (a folder or hub id)."""
    source = str(source)
    if source == "tiny":
        return str(ensure_tiny_model(seed=tiny_seed))
    if source.startswith("models:/"):
        from musicgen_train.registry.resolve import download_registry_model

        return str(download_registry_model(source, registry_uri))
    path = Path(source).expanduser()
    if path.suffix == ".ckpt" or (path.is_dir() and _is_lightning_checkpoint_dir(path)):
        from musicgen_train.registry.checkpoint import checkpoint_to_pretrained

        return str(checkpoint_to_pretrained(path))
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelNotFoundError(
                f"model folder {path} has no config.json: give a folder written by "
                "save_pretrained / musicgen-train export, a .ckpt file, or a hub id"
            )
        from musicgen_train.registry.checksums import has_checksums, verify_checksums

        if has_checksums(path):  # an export: refuse it if a file was altered or truncated
            verify_checksums(path)
        return str(path)
    if source.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"model path {source} does not exist")
    return source  # a hub id


def load_options(cfg) -> dict:
    """The loader's keyword arguments that a composed config decides: which tiny model, and
    which registry ``models:/`` URIs name (``registry.uri``, else MLFLOW_TRACKING_URI, else the
    local store under ``work_dir``)."""
    from musicgen_train.registry.location import configured_tracking_uri

    registry_uri = OmegaConf.select(cfg, "registry.uri")
    return {
        "tiny_seed": int(OmegaConf.select(cfg, "model.tiny_seed", default=0) or 0),
        "registry_uri": configured_tracking_uri(registry_uri, cfg.work_dir),
    }


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
    """Load model and processor, or raise ModelNotFoundError with one clear line."""
    path = resolve_model_source(source, tiny_seed=tiny_seed, registry_uri=registry_uri)
    hub = hub_kwargs(path)
    try:
        kwargs = {"dtype": dtype} if dtype is not None else {}
        model = MusicgenForConditionalGeneration.from_pretrained(path, **hub, **kwargs)
        processor = AutoProcessor.from_pretrained(path, **hub)
    except (OSError, ValueError) as err:
        raise ModelNotFoundError(_missing_message(source, path, hub_offline())) from err
    from musicgen_train.registry.model_folder import merge_saved_adapter

    model = merge_saved_adapter(model, path)  # exports with export.merge_lora=false
    model.to(device).eval()
    return LoadedModel(model=model, processor=processor, source=str(source), path=path)


def _missing_message(source: str, path: str, offline: bool) -> str:
    if Path(path).exists():
        return f"model folder {path} could not be loaded: it is incomplete or not a MusicGen"
    how = (
        "HF_HUB_OFFLINE=1 is set, so nothing is downloaded"
        if offline
        else "it is not in the Hugging Face cache and the hub could not be reached"
    )
    return (
        f"checkpoint '{source}' is not available ({how}): download it once on a machine with "
        f"network (`hf download {source}`), copy the cache (~/.cache/huggingface), or point "
        "model.id at a local folder saved with save_pretrained"
    )
