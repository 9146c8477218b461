"""Conditioning for the melody family: a reference melody -> the chroma its decoder starts from.

A melody model generates with a reference by::

    engine.generate(prompts, params, melody="ref.wav")            # or float audio [C, S]
    engine.generate(prompts, params, **melody_conditioning(engine.loaded, "ref.wav", len(prompts)))

The chroma is computed exactly as for training segments (``model.chroma.ChromaExtractor``, the
model folder's own settings): from the reference's first ``chunk_length`` (30) seconds, channels
averaged; shorter than the model's ``chroma_length``, it is repeated, and the null chroma for
classifier-free guidance is added, as transformers' ``generate`` does
(``condition_prefix.py``). Stereo models need nothing here: their rows decode to two channels.

Long form reads the melody periodically from each window's start (``melody_window``), as
audiocraft's ``_generate_tokens`` does (``RowChroma``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from musicgen_train.errors import UserError
from musicgen_train.generation.rows import GenerationInputError


def _extractor(loaded):
    extractor = getattr(loaded.processor, "chroma", None)
    if extractor is None:
        raise UserError(
            f"melody= needs a melody model (e.g. facebook/musicgen-melody, tiny-melody): "
            f"{loaded.source} is conditioned on text only"
        )
    return extractor


def read_melody(loaded, melody, sample_rate: int | None = None) -> np.ndarray:
    """``melody`` (an audio file or its bytes, or float audio ``[samples]`` /
    ``[channels, samples]`` at ``sample_rate``) as float32 ``[channels, samples]`` at the
    chroma extractor's rate. One clear line for a model that takes no melody, a file that
    cannot be read or an empty melody."""
    extractor = _extractor(loaded)
    if isinstance(melody, str | Path | bytes):
        audio = _read(melody, extractor.sampling_rate)
    else:
        audio = np.atleast_2d(np.asarray(melody, dtype=np.float32))
        if sample_rate is not None and int(sample_rate) != extractor.sampling_rate:
            from musicgen_train.audio import resample

            audio = resample(audio, int(sample_rate), extractor.sampling_rate)
    if audio.shape[-1] == 0:  # name the file: a script passes many
        name = f"={melody}" if isinstance(melody, str | Path) else ""
        raise UserError(f"melody{name} holds no audio (0 samples)")
    return audio


def chroma_frames(loaded, audio: np.ndarray) -> torch.Tensor:
    """The chroma ``[frames, 12]`` (float32, CPU) of audio at the extractor's rate."""
    return _extractor(loaded)(np.atleast_2d(audio)[None])[0].float().cpu()


def chroma_features(loaded, audio: np.ndarray, batch: int = 1) -> dict:
    """``{"input_features": [batch, frames, 12]}`` from audio at the extractor's rate."""
    chroma = chroma_frames(loaded, audio)[None]
    device = next(loaded.model.parameters()).device
    features = chroma.repeat(int(batch), 1, 1).to(device, dtype=loaded.model.dtype)
    return {"input_features": features}


def melody_conditioning(loaded, melody, batch: int, sample_rate: int | None = None) -> dict:
    """``{"input_features": [batch, frames, 12]}`` for ``loaded`` (a melody model) from
    ``melody`` (see ``read_melody``)."""
    return chroma_features(loaded, read_melody(loaded, melody, sample_rate), batch)


class RowChroma:
    """Each row's melody for a window that starts at clip frame ``begins`` (``at(begins)``, a
    list of ``[frames, 12]`` or None per row): a reference's chroma from its start for the
    first window, from the window's start, read periodically, for the later ones; given
    ``input_features`` for every window as they are; None for a row without a melody.
    ``references``: per row, audio at the extractor's rate or None."""

    def __init__(self, loaded, references: list, features=None, window_seconds=30.0):
        self.loaded, self.references, self.features = loaded, references, features
        self.window_seconds = float(window_seconds)
        self._first: dict[int, torch.Tensor] = {}  # a reference's whole chroma, made once

    def at(self, begins: int) -> list:
        if self.features is not None:
            return [self.features[i] for i in range(len(self.references))]
        return [self._chroma(i, begins) for i in range(len(self.references))]

    def _chroma(self, row: int, begins: int) -> torch.Tensor | None:
        audio = self.references[row]
        if audio is None:
            return None
        if begins == 0:
            key = id(audio)  # rows given the same reference share its chroma
            if key not in self._first:
                self._first[key] = chroma_frames(self.loaded, audio)
            return self._first[key]
        rate = _extractor(self.loaded).sampling_rate
        start = int(round(begins / self.loaded.frame_rate * rate))
        window = melody_window(audio, start, int(round(self.window_seconds * rate)))
        return chroma_frames(self.loaded, window)


def row_chroma(
    loaded, rows: int, melody, conditioning: dict, sample_rate: int, window_seconds: float
) -> RowChroma:
    """The rows' melodies from ``generate``'s arguments: ``melody`` (a file, its bytes, or
    float audio ``[C, S]`` at ``sample_rate``) for every row, or a list of those (or None),
    one per row; or ``conditioning``'s ``input_features`` ``[rows, frames, 12]``. One clear
    line for anything else."""
    unknown = sorted(set(conditioning) - {"input_features"})
    if unknown:
        raise GenerationInputError(
            f"unknown generation input {', '.join(unknown)}: the engine takes input_features "
            "(a melody model's chroma) or melody="
        )
    features = conditioning.get("input_features")
    if features is not None and melody is not None:
        raise GenerationInputError("give melody= or input_features, not both")
    if features is not None:
        _extractor(loaded)  # a text model: one line
        features = torch.as_tensor(features).float().cpu()
        if features.dim() != 3 or features.shape[0] != rows:
            raise GenerationInputError(
                f"input_features must be [{rows}, frames, 12] (one chroma per prompt), "
                f"not {list(features.shape)}"
            )
    per_row = melody if isinstance(melody, list | tuple) else [melody] * rows
    if len(per_row) != rows:
        raise GenerationInputError(
            f"melody= has {len(per_row)} entries: give one per prompt ({rows}), or one for all"
        )
    read = {}  # one reading per distinct reference
    for item in per_row:
        if item is not None and id(item) not in read:
            read[id(item)] = read_melody(loaded, item, sample_rate)
    references = [None if item is None else read[id(item)] for item in per_row]
    return RowChroma(loaded, references, features, window_seconds)


def melody_window(audio: np.ndarray, start: int, length: int) -> np.ndarray:
    """``length`` samples of ``audio`` ``[channels, samples]`` from sample ``start``, read
    periodically (audiocraft: ``ref_wav[..., positions % wav_length]``)."""
    positions = (int(start) + np.arange(int(length))) % audio.shape[-1]
    return np.ascontiguousarray(audio[..., positions])


def _read(source: str | Path | bytes, sample_rate: int) -> np.ndarray:
    """A file (or its bytes: the service's uploads) read as ``melody=`` files are."""
    from musicgen_train.audio import load_audio

    name = f"({len(source)} bytes)" if isinstance(source, bytes) else Path(source)
    try:
        return load_audio(source if isinstance(source, bytes) else Path(source), sample_rate, 1)
    except Exception as err:  # soundfile's errors name neither the file nor the argument
        raise UserError(f"melody={name} cannot be read as audio: {err}") from err
