"""audiocraft's evaluation protocol, as options: generations cut to the reference length and
loudness-normalised (ITU-R BS.1770 integrated loudness, with ``pyloudnorm``).

audiocraft scores MusicGen with every generation cut to the length of its reference clip and
written with ``strategy="loudness"`` at -14 LUFS (then clipped to [-1, 1]). ``eval.protocol``:

- ``cut_to_reference``: a generation is cut to the duration of its prompt's ``reference`` audio
  (prompts without one are left as they are); ``cut_seconds`` cuts every generation to a fixed
  length instead (10 s: MusicCaps).
- ``loudness_lufs``: integrated loudness target (audiocraft: -14); null = off. A clip too short
  for one 400 ms gating block, or silent, is left unchanged.

The processed audio is written beside the raw generations (``.../protocol/``), so the report's
players and the embedding cache see exactly what was scored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from musicgen_train.audio import audio_info, write_audio
from musicgen_train.evaluation.clips import Clip

BLOCK_SECONDS = 0.4  # BS.1770 gating block


def integrated_loudness(audio: np.ndarray, rate: int) -> float:
    """BS.1770 integrated loudness (LUFS) of ``[channels, samples]`` audio; -inf when silent."""
    import pyloudnorm

    meter = pyloudnorm.Meter(rate)
    return float(meter.integrated_loudness(np.asarray(audio, dtype=np.float64).T))


def normalise_loudness(audio: np.ndarray, rate: int, target_lufs: float = -14.0) -> np.ndarray:
    """``audio`` scaled to ``target_lufs`` integrated loudness, then clipped to [-1, 1]."""
    audio = np.atleast_2d(np.asarray(audio, dtype=np.float32))
    if audio.shape[-1] < int(BLOCK_SECONDS * rate) + 1:
        return audio
    loudness = integrated_loudness(audio, rate)
    if not np.isfinite(loudness):
        return audio
    gain = 10.0 ** ((target_lufs - loudness) / 20.0)
    return np.clip(audio * gain, -1.0, 1.0).astype(np.float32)


def apply_protocol(
    clips: list[list[Clip]], references: list[Path | None], settings, folder: Path
) -> list[list[Clip]]:
    """The clips with the protocol applied (new files under ``folder``), or the same clips."""
    if not settings:
        return clips
    cut_ref = bool(settings.get("cut_to_reference", False))
    cut_seconds = settings.get("cut_seconds")
    target = settings.get("loudness_lufs")
    if not cut_ref and cut_seconds is None and target is None:
        return clips
    out: list[list[Clip]] = []
    for group, reference in zip(clips, references, strict=True):
        limit = float(cut_seconds) if cut_seconds is not None else None
        if cut_ref and reference is not None:
            limit = audio_info(reference)[0]
        processed = []
        for clip in group:
            audio, rate = clip.load()
            if limit is not None:
                audio = audio[..., : max(1, int(round(limit * rate)))]
            if target is not None:
                audio = normalise_loudness(audio, rate, float(target))
            path = write_audio(Path(folder) / Path(clip.path).name, audio, rate)
            processed.append(Clip(Path(path), name=clip.name))
        out.append(processed)
    return out
