"""The family table: which transformers class loads a folder, read from its ``config.json``.

MusicGen comes in two composite classes: text-to-music (``model_type`` ``musicgen``, mono or
stereo: the decoder's ``audio_channels`` says which) and melody-conditioned (``musicgen_melody``,
chroma features prepended to the text condition). A new family is one row of ``FAMILIES``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from musicgen_train.errors import ModelNotFoundError


@dataclass(frozen=True)
class Family:
    model_type: str
    model_class: str  # transformers' composite class
    config_class: str
    melody: bool  # conditioned on chroma (``input_features``) as well as text


FAMILIES = {
    "musicgen": Family(
        "musicgen", "MusicgenForConditionalGeneration", "MusicgenConfig", melody=False
    ),
    "musicgen_melody": Family(
        "musicgen_melody",
        "MusicgenMelodyForConditionalGeneration",
        "MusicgenMelodyConfig",
        melody=True,
    ),
}


def family_of_type(model_type: str, where: str = "the model") -> Family:
    try:
        return FAMILIES[model_type]
    except KeyError:
        known = ", ".join(sorted(FAMILIES))
        raise ModelNotFoundError(
            f"{where} is a '{model_type}' model (config.json model_type): not a MusicGen "
            f"family this project trains ({known})"
        ) from None


def family_of(path: str, **hub) -> Family:
    """The family of the folder or hub id ``path`` (its config is read, nothing else)."""
    local = Path(str(path)) / "config.json"
    if local.exists():
        config = json.loads(local.read_text())
    else:
        from transformers import PretrainedConfig

        config, _ = PretrainedConfig.get_config_dict(str(path), **hub)
    return family_of_type(str(config.get("model_type", "musicgen")), str(path))


def model_class(family: Family):
    import transformers

    return getattr(transformers, family.model_class)


def config_class(family: Family):
    import transformers

    return getattr(transformers, family.config_class)


def family_of_model(model) -> Family:
    """The family of a loaded composite model."""
    return family_of_type(str(model.config.model_type))


def audio_channels(model_or_config) -> int:
    """1 (mono) or 2 (stereo: codebooks interleaved left, right, left, ...)."""
    config = getattr(model_or_config, "config", model_or_config)
    return int(getattr(config.decoder, "audio_channels", 1) or 1)


def is_melody(model) -> bool:
    return family_of_model(model).melody
