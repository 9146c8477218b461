"""Load a MusicGen from a folder written by ``save_pretrained`` or from a hub id.

This is the core of every model load; it knows nothing about where a folder came from. Turning
what a user wrote (``tiny``, a checkpoint, ``models:/name@alias``) into such a folder is the job
of ``musicgen_train.sources``, the one place that knows every kind of model source.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoProcessor, MusicgenForConditionalGeneration

from musicgen_train.errors import ModelNotFoundError, UserError
from musicgen_train.model.families import Family, audio_channels, family_of, model_class
from musicgen_train.model.hub_access import hub_kwargs, hub_offline
from musicgen_train.model.lora import merge_saved_adapter


@dataclass
class LoadedModel:
    model: MusicgenForConditionalGeneration  # or MusicgenMelodyForConditionalGeneration
    processor: object
    source: str  # what the user asked for
    path: str  # the folder or hub id that was finally loaded

    @property
    def sample_rate(self) -> int:
        return int(self.model.config.audio_encoder.sampling_rate)

    @property
    def frame_rate(self) -> float:
        return float(self.model.config.audio_encoder.frame_rate)

    @property
    def channels(self) -> int:
        return audio_channels(self.model)


def load_pretrained(
    path: str,
    *,
    source: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> LoadedModel:
    """Model and processor of a folder or hub id ``path``; ``source`` is what the user wrote
    (for messages). Raises ModelNotFoundError with one clear line."""
    source = str(source or path)
    hub = hub_kwargs(path)
    try:
        family = family_of(path, **hub)
        kwargs = {"dtype": dtype} if dtype is not None else {}
        model = model_class(family).from_pretrained(path, **hub, **kwargs)
        processor = load_processor(path, family, **hub)
    except (OSError, ValueError) as err:
        raise ModelNotFoundError(missing_message(source, path, hub_offline())) from err
    model = merge_saved_adapter(model, path)  # exports with export.merge_lora=false
    check_finite_weights(model, source)
    model.to(device).eval()
    return LoadedModel(model=model, processor=processor, source=source, path=str(path))


def check_finite_weights(model, source: str) -> None:
    """One line for a model holding NaN or inf weights (saved from a diverged training run):
    every stage would otherwise fail much later and far away (int8 quantisation raises
    "min should be less than or equal to max"; fp32 generates NaN audio). Reading every
    weight once costs little beside reading it from disk."""
    for name, parameter in model.named_parameters():
        if not bool(torch.isfinite(parameter).all()):
            bad = int((~torch.isfinite(parameter)).sum())
            raise UserError(
                f"model {source} holds {bad} NaN or infinite value(s) in {name}: it was saved "
                "from a training run that diverged; use a checkpoint from before it (training "
                "now stops at the first non-finite loss: docs/training.md)"
            )


def load_processor(path: str, family: Family, **hub):
    """transformers' processor; for melody folders ours (tokenizer + chroma, no torchaudio)."""
    if family.melody:
        from musicgen_train.model.chroma import MelodyProcessor

        return MelodyProcessor.from_pretrained(path, **hub)
    return AutoProcessor.from_pretrained(path, **hub)


def missing_message(source: str, path: str, offline: bool) -> str:
    """The one line that explains why ``source`` (loaded as ``path``) is not available."""
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
