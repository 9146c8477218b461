"""MusicGen without its audio codec, for training on cached codes, and the codec on its own.

Training reads EnCodec codes from the token cache, so the codec's weights are never needed to
compute the loss. ``load_without_codec`` hands ``from_pretrained`` a weightless stand-in for the
codec: its tensors in the checkpoint are skipped (never read), the rest loads as usual.
``attach_codec`` puts the real codec back when audio must be decoded (samples, export).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from transformers import AutoProcessor, MusicgenConfig, MusicgenForConditionalGeneration
from transformers.utils import logging as hf_logging

from musicgen_train.model.hub_access import hub_kwargs, hub_offline
from musicgen_train.model.loader import (
    ModelNotFoundError,
    _missing_message,  # the loader's one-line explanation, shared on purpose
    resolve_model_source,
)


class CodecNotLoaded(nn.Module):
    """Stands where ``model.audio_encoder`` would be; holds the codec's config, no weights."""

    def __init__(self, config):
        super().__init__()
        self.config = config

    def forward(self, *args, **kwargs):
        raise RuntimeError(
            "the audio codec was not loaded (training runs on cached codes): call "
            "musicgen_train.model.codec.attach_codec(model, source) before decoding audio"
        )

    def decode(self, *args, **kwargs):
        return self.forward()


@dataclass
class CodecFreeModel:
    model: MusicgenForConditionalGeneration  # audio_encoder is a CodecNotLoaded
    processor: object
    path: str  # the folder or hub id that was loaded


def _quiet_from_pretrained(path: str, **kwargs) -> MusicgenForConditionalGeneration:
    # The skipped codec tensors show up as "UNEXPECTED" in transformers' load report: expected.
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return MusicgenForConditionalGeneration.from_pretrained(path, **kwargs)
    finally:
        hf_logging.set_verbosity(level)


def load_without_codec(
    source: str, *, tiny_seed: int = 0, registry_uri: str | None = None
) -> CodecFreeModel:
    """Text encoder, decoder and projection of ``source``; the codec stays on disk."""
    path = resolve_model_source(source, tiny_seed=tiny_seed, registry_uri=registry_uri)
    hub = hub_kwargs(path)
    try:
        config = MusicgenConfig.from_pretrained(path, **hub)
        model = _quiet_from_pretrained(
            path, config=config, audio_encoder=CodecNotLoaded(config.audio_encoder), **hub
        )
        processor = AutoProcessor.from_pretrained(path, **hub)
    except (OSError, ValueError) as err:
        raise ModelNotFoundError(_missing_message(source, path, hub_offline())) from err
    return CodecFreeModel(model=model, processor=processor, path=str(path))


def has_codec(model: MusicgenForConditionalGeneration) -> bool:
    return not isinstance(model.audio_encoder, CodecNotLoaded)


def load_codec(source: str, *, tiny_seed: int = 0, registry_uri: str | None = None) -> nn.Module:
    """The EnCodec of ``source`` (the composite is loaded once and all but the codec dropped)."""
    path = resolve_model_source(source, tiny_seed=tiny_seed, registry_uri=registry_uri)
    codec = _quiet_from_pretrained(path, **hub_kwargs(path)).audio_encoder
    return codec.eval().requires_grad_(False)


def attach_codec(
    model: MusicgenForConditionalGeneration,
    source: str,
    *,
    tiny_seed: int = 0,
    registry_uri: str | None = None,
) -> MusicgenForConditionalGeneration:
    """Give ``model`` its real codec back (in place), on the device of the model's weights."""
    if not has_codec(model):
        device = next(model.decoder.parameters()).device
        codec = load_codec(source, tiny_seed=tiny_seed, registry_uri=registry_uri)
        model.audio_encoder = codec.to(device)
    return model
