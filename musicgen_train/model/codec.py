"""MusicGen without its audio codec, for training on cached codes, and the codec on its own.

Training reads EnCodec codes from the token cache, so the codec's weights are never needed to
compute the loss. ``load_without_codec`` hands ``from_pretrained`` a weightless stand-in for the
codec: its tensors in the checkpoint are skipped (never read), the rest loads as usual.
``attach_codec`` puts the real codec back when audio must be decoded (samples, export).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import MusicgenForConditionalGeneration
from transformers.utils import logging as hf_logging

from musicgen_train.model.families import config_class, family_of, model_class
from musicgen_train.model.hub_access import hub_kwargs, hub_offline
from musicgen_train.model.loader import ModelNotFoundError, load_processor, missing_message


class CodecNotLoaded(nn.Module):
    """Stands where ``model.audio_encoder`` would be; holds the codec's config, no weights."""

    def __init__(self, config):
        super().__init__()
        self.config = config

    def forward(self, *args, **kwargs):
        raise RuntimeError(
            "the audio codec was not loaded (training runs on cached codes): call "
            "musicgen_train.sources.attach_codec(model, source) before decoding audio"
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
        cls = model_class(family_of(path, **hub_kwargs(path)))
        return cls.from_pretrained(path, **kwargs)
    finally:
        hf_logging.set_verbosity(level)


def load_without_codec(path: str, *, source: str | None = None) -> CodecFreeModel:
    """Text encoder, decoder and projection of the folder or hub id ``path``; the codec stays
    on disk. ``source`` is what the user wrote, for messages."""
    hub = hub_kwargs(path)
    try:
        family = family_of(path, **hub)
        config = config_class(family).from_pretrained(path, **hub)
        model = _quiet_from_pretrained(
            path, config=config, audio_encoder=CodecNotLoaded(config.audio_encoder), **hub
        )
        processor = load_processor(path, family, **hub)
    except (OSError, ValueError) as err:
        raise ModelNotFoundError(missing_message(source or path, path, hub_offline())) from err
    return CodecFreeModel(model=model, processor=processor, path=str(path))


def has_codec(model: MusicgenForConditionalGeneration) -> bool:
    return not isinstance(model.audio_encoder, CodecNotLoaded)


def load_codec(path: str) -> nn.Module:
    """The EnCodec of the folder or hub id ``path`` (the composite is loaded once and all but
    the codec dropped)."""
    codec = _quiet_from_pretrained(path, **hub_kwargs(path)).audio_encoder
    return codec.eval().requires_grad_(False)


def attach_codec(model: MusicgenForConditionalGeneration, path: str):
    """Give ``model`` the codec of ``path`` back (in place), on the device of its weights."""
    if not has_codec(model):
        device = next(model.decoder.parameters()).device
        model.audio_encoder = load_codec(path).to(device)
    return model


@torch.no_grad()
def decode_codes(codec: nn.Module, codes: torch.Tensor, channels: int = 1) -> torch.Tensor:
    """Raw codes ``[batch, K, frames]`` -> audio ``[batch, channels, samples]``.

    Stereo codes are interleaved (left's codebook k at 2k, right's at 2k + 1): each channel is
    decoded on its own, as transformers' stereo ``generate`` does (``[:, ::2]``, ``[:, 1::2]``).
    """
    codes = codes.long()[None]  # [chunks=1, batch, K, frames]
    parts = [codes[:, :, c::channels] for c in range(channels)]
    audio = [codec.decode(part, [None]).audio_values for part in parts]
    return torch.cat(audio, dim=1)
