"""audiocraft's evaluation protocol, as options: generations cut to the reference length and
loudness-normalised (ITU-R BS.1770 integrated loudness, with ``pyloudnorm``).

audiocraft scores MusicGen with every generation cut to the length of its reference clip and
written with ``strategy="loudness"`` at -14 LUFS (then clipped to [-1, 1]). ``eval.protocol``:

- ``cut_to_reference``: a generation is cut to the duration of its prompt's ``reference`` audio
  (prompts without one are left as they are); ``cut_seconds`` cuts every generation to a fixed
  length instead (10 s: MusicCaps).
- ``loudness_lufs``: integrated loudness target (audiocraft: -14); null = off. A clip too short
  for one 400 ms gating block, or quieter than audiocraft's energy floor, is left unchanged.

As audiocraft, the protocol is applied to the model's float output (cut, normalise, clip), then
written as 16-bit: normalising the clipped 16-bit file would score other audio whenever a
generation goes beyond full scale. The processed audio is written beside the raw generations
(``.../protocol/``), so the report's players and the embedding cache see exactly what was scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from musicgen_train.audio import audio_info, write_audio
from musicgen_train.evaluation.clips import Clip

BLOCK_SECONDS = 0.4  # BS.1770 gating block
# audiocraft's ``normalize_loudness`` leaves audio whose RMS is below this alone (near-silence
# would otherwise be amplified into loud noise): the same floor, so the same clips are scaled.
ENERGY_FLOOR = 2e-3


def integrated_loudness(audio: np.ndarray, rate: int) -> float:
    """BS.1770 integrated loudness (LUFS) of ``[channels, samples]`` audio; -inf when silent."""
    import pyloudnorm

    meter = pyloudnorm.Meter(rate)
    return float(meter.integrated_loudness(np.asarray(audio, dtype=np.float64).T))


def normalise_loudness(audio: np.ndarray, rate: int, target_lufs: float = -14.0) -> np.ndarray:
    """``audio`` scaled to ``target_lufs`` integrated loudness, then clipped to [-1, 1].

    As audiocraft's ``normalize_audio(strategy="loudness")``: audio quieter than an RMS of
    ``ENERGY_FLOOR`` is left as it is. Give it the model's float output, not a 16-bit file: a
    generation beyond full scale is scaled first and clipped after, as audiocraft writes it.
    """
    audio = np.atleast_2d(np.asarray(audio, dtype=np.float32))
    if audio.shape[-1] < int(BLOCK_SECONDS * rate) + 1:
        return audio
    if float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) < ENERGY_FLOOR:
        return audio
    loudness = integrated_loudness(audio, rate)
    if not np.isfinite(loudness):
        return audio
    gain = 10.0 ** ((target_lufs - loudness) / 20.0)
    return np.clip(audio * gain, -1.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class Protocol:
    """The options of ``eval.protocol`` that change the audio; built by ``protocol_for``."""

    cut_to_reference: bool = False
    cut_seconds: float | None = None
    loudness_lufs: float | None = None

    def apply(self, audio: np.ndarray, rate: int, reference: Path | None) -> np.ndarray:
        """Cut, then normalise loudness (audiocraft's order: cut, normalise, clip)."""
        limit = self.cut_seconds
        if self.cut_to_reference and reference is not None:
            limit = audio_info(reference)[0]
        if limit is not None:
            audio = audio[..., : max(1, int(round(float(limit) * rate)))]
        if self.loudness_lufs is not None:
            audio = normalise_loudness(audio, rate, float(self.loudness_lufs))
        return audio


def protocol_for(settings) -> Protocol | None:
    """The protocol of ``eval.protocol``, or None when it changes nothing."""
    if not settings:
        return None
    cut_seconds = settings.get("cut_seconds")
    target = settings.get("loudness_lufs")
    protocol = Protocol(
        cut_to_reference=bool(settings.get("cut_to_reference", False)),
        cut_seconds=None if cut_seconds is None else float(cut_seconds),
        loudness_lufs=None if target is None else float(target),
    )
    return protocol if protocol != Protocol() else None


def apply_protocol(
    clips: list[list[Clip]], references: list[Path | None], settings, folder: Path
) -> list[list[Clip]]:
    """The clips (audio files) with the protocol applied (new files under ``folder``), or the
    same clips. Files already written as 16-bit are clipped: ``evaluate`` applies the protocol
    to the float generations instead (``generate_clips(protocol=...)``)."""
    protocol = protocol_for(settings)
    if protocol is None:
        return clips
    out: list[list[Clip]] = []
    for group, reference in zip(clips, references, strict=True):
        processed = []
        for clip in group:
            audio, rate = clip.load()
            audio = protocol.apply(audio, rate, reference)
            path = write_audio(Path(folder) / Path(clip.path).name, audio, rate)
            processed.append(Clip(Path(path), name=clip.name))
        out.append(processed)
    return out
