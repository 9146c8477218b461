"""Whether the clips training reads fit the model's position table.

MusicGen's decoder has ``max_position_embeddings`` positions (2048: 40.9 s at 50 frames/s, less
the codebook delay, and less a melody model's 235 chroma positions). transformers silently
extends its sinusoidal table for a longer input, so a 60 s segment trains, slowly and with
quadratic memory, on positions that ``generate`` never reaches (it stops at the same limit).
One line instead, before the first step, naming the setting that fixes it without re-encoding.
"""

from __future__ import annotations

import math

from omegaconf import DictConfig

from musicgen_train.errors import UserError
from musicgen_train.model.delay import delay_steps
from musicgen_train.model.families import is_melody


def max_training_frames(model) -> int:
    """The most codec frames one training clip may hold (the delay pattern adds D - 1 more)."""
    condition = int(model.config.chroma_length) if is_melody(model) else 0
    positions = int(model.config.decoder.max_position_embeddings)
    return positions - condition - delay_steps(model.decoder)


def training_seconds(cfg: DictConfig) -> float:
    """How long each training clip is: the crop, when shorter than the cached segments."""
    segment = float(cfg.data.segment_seconds)
    crop = cfg.data.get("crop_seconds")
    return min(segment, float(crop)) if crop else segment


def check_training_length(model, cfg: DictConfig) -> None:
    frame_rate = float(model.config.audio_encoder.frame_rate)
    seconds = training_seconds(cfg)
    limit = max_training_frames(model)
    if round(seconds * frame_rate) <= limit:
        return
    fits = math.floor(limit / frame_rate)
    key = "data.crop_seconds" if cfg.data.get("crop_seconds") else "data.segment_seconds"
    raise UserError(
        f"{key}={seconds:g} is longer than {cfg.model.name} can attend to ({limit / frame_rate:.1f}"
        f" s: {limit} frames at {frame_rate:g} frames/s): set data.crop_seconds={fits} (random "
        f"{fits} s crops of the cached segments, no re-encoding) or data.segment_seconds={fits}"
    )
