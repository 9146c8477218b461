"""Conditioning for the melody family: a reference melody -> the chroma ``generate`` takes.

The engine passes extra keywords to transformers' ``generate``, so a melody model generates
with a reference by::

    engine.generate(prompts, params, melody="ref.wav")            # or float audio [C, S]
    engine.generate(prompts, params, **melody_conditioning(engine.loaded, "ref.wav", len(prompts)))

The chroma is computed exactly as for training segments (``model.chroma.ChromaExtractor``, the
model folder's own settings): from the reference's first ``chunk_length`` (30) seconds, channels
averaged; ``generate`` repeats it when shorter than the model's ``chroma_length`` and adds the
null chroma itself for classifier-free guidance. Stereo models need nothing here: their
``generate`` already returns ``[batch, 2, samples]``.

Long form (``melody_runs.py``) reads the melody periodically from each window's start
(``melody_window``), as audiocraft's ``_generate_tokens`` does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from musicgen_train.errors import UserError


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
    if audio.shape[-1] == 0:
        raise UserError("melody holds no audio (0 samples)")
    return audio


def chroma_features(loaded, audio: np.ndarray, batch: int = 1) -> dict:
    """``{"input_features": [batch, frames, 12]}`` from audio at the extractor's rate."""
    chroma = _extractor(loaded)(np.atleast_2d(audio)[None])  # [1, frames, 12]
    device = next(loaded.model.parameters()).device
    features = chroma.repeat(int(batch), 1, 1).to(device, dtype=loaded.model.dtype)
    return {"input_features": features}


def melody_conditioning(loaded, melody, batch: int, sample_rate: int | None = None) -> dict:
    """``{"input_features": [batch, frames, 12]}`` for ``loaded`` (a melody model) from
    ``melody`` (see ``read_melody``)."""
    return chroma_features(loaded, read_melody(loaded, melody, sample_rate), batch)


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
