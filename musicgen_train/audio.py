"""Reading, converting and writing audio with soundfile and soxr (no torchaudio, no ffmpeg)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

# What libsndfile reads (the formats music comes in; it reads more, rarer ones).
# (.oga is Ogg's own audio suffix, Wikimedia Commons' music among others; .wave and .bwf,
# broadcast wave, are WAV files.)
AUDIO_EXTENSIONS = (
    ".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif", ".aifc", ".au", ".snd", ".caf",
    ".w64", ".rf64", ".oga", ".wave", ".bwf",
)  # fmt: skip
# Audio that libsndfile cannot read: reported where it is found, so nothing vanishes unsaid
# (phones' .amr/.3gp memos, .m4b audiobooks; MIDI files hold notes, not sound).
UNSUPPORTED_AUDIO = (
    ".m4a", ".aac", ".wma", ".mp4", ".ape", ".alac", ".webm", ".wv", ".mka", ".ac3", ".dsf",
    ".m4b", ".amr", ".3gp", ".mid", ".midi",
)  # fmt: skip


def unsupported_reason(suffix: str) -> str:
    """The one line a file of an ``UNSUPPORTED_AUDIO`` suffix is reported with."""
    if suffix.lower() in (".mid", ".midi"):
        return f"{suffix} is MIDI (notes, not sound): render it to flac or wav to train on it"
    return f"{suffix} cannot be read with libsndfile: convert it to flac or wav"


# Containers libsndfile cannot open, by their first bytes: what a phone or a streaming service
# hands out (an upload has no file name to go by).
_UNREADABLE_SIGNATURES = (
    (4, b"ftyp", "an MP4/M4A file (AAC or ALAC)"),
    (0, b"\x30\x26\xb2\x75\x8e\x66\xcf\x11", "a WMA/ASF file"),
    (0, b"\x1a\x45\xdf\xa3", "a WebM/Matroska file"),
    (0, b"MAC ", "a Monkey's Audio (APE) file"),
    (0, b"wvpk", "a WavPack file"),
)


def _is_adts(data: bytes) -> bool:
    """Raw AAC: ADTS's 12-bit sync word and layer 0 (MPEG-2 or -4, with or without CRC); an MP3
    frame has the same sync word but layer 1-3, and libsndfile reads MP3."""
    return len(data) >= 2 and data[0] == 0xFF and data[1] & 0xF6 == 0xF0


def unreadable_format(data: bytes) -> str | None:
    """What ``data`` is, when its first bytes name a container libsndfile cannot open."""
    for offset, magic, what in _UNREADABLE_SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            return what
    return "raw AAC (ADTS)" if _is_adts(data) else None


def read_audio(source: str | Path | bytes) -> tuple[np.ndarray, int]:
    """Decode a file (or its bytes) to float32 ``[channels, samples]`` and its sample rate."""
    handle = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    data, rate = sf.read(handle, dtype="float32", always_2d=True)
    return np.ascontiguousarray(data.T), int(rate)


def audio_info(path: str | Path) -> tuple[float, int, int]:
    """Duration in seconds, sample rate and channels, read from the header only."""
    info = sf.info(str(path))
    return float(info.frames) / info.samplerate, int(info.samplerate), int(info.channels)


def to_channels(audio: np.ndarray, channels: int) -> np.ndarray:
    """Downmix to mono by averaging, or duplicate mono to stereo."""
    if audio.shape[0] == channels:
        return audio
    if channels == 1:
        return audio.mean(axis=0, keepdims=True)
    if audio.shape[0] == 1:
        return np.repeat(audio, channels, axis=0)
    return audio[:channels]


def resample(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Resample ``[channels, samples]`` with soxr's high-quality filter."""
    if rate_in == rate_out:
        return audio
    out = soxr.resample(audio.T, rate_in, rate_out, quality="HQ")
    return np.ascontiguousarray(np.asarray(out, dtype=np.float32).reshape(-1, audio.shape[0]).T)


def load_audio(path: str | Path | bytes, sample_rate: int, channels: int = 1) -> np.ndarray:
    """Decode, convert channels and resample in one call: what most stages want."""
    audio, rate = read_audio(path)
    return resample(to_channels(audio, channels), rate, sample_rate)


def write_audio(path: str | Path, audio: np.ndarray, sample_rate: int) -> Path:
    """Write ``[channels, samples]`` (or ``[samples]``); the format follows the suffix."""
    audio = np.atleast_2d(np.asarray(audio, dtype=np.float32))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    subtype = "PCM_16" if path.suffix.lower() in (".wav", ".flac") else None
    sf.write(str(path), np.clip(audio, -1.0, 1.0).T, sample_rate, subtype=subtype)
    return path


def encode_audio_bytes(audio: np.ndarray, sample_rate: int, fmt: str = "wav") -> bytes:
    """The bytes of a wav or flac file holding ``audio``."""
    buffer = io.BytesIO()
    audio = np.atleast_2d(np.asarray(audio, dtype=np.float32))
    sf.write(buffer, np.clip(audio, -1.0, 1.0).T, sample_rate, format=fmt.upper(), subtype="PCM_16")
    return buffer.getvalue()
