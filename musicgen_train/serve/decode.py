"""Decoding audio a client sent, within bounds: a small compressed file must not decode to
gigabytes in the server.

FLAC and Ogg store silence in a few bytes per block: an 840 KB FLAC of 10 minutes at 384 kHz
decoded to 1.1 GB of float32 before its length was checked (and an upload's length was never
checked at all), and a FLAC header may claim any number of frames, which ``soundfile.read``
allocates at once ("Unable to allocate 512 GiB"). Here the header is checked first, then the
file is read block by block and refused as soon as it is longer than allowed, whatever its
header said; and at most ``PARALLEL_DECODES`` files decode at once, so many concurrent uploads
cannot add their peaks up.
"""

from __future__ import annotations

import io
import threading

import numpy as np
import soundfile as sf

MAX_CHANNELS = 8  # 7.1; FLAC's own limit. Vorbis allows 255, WAV 1024.
MAX_SAMPLE_RATE = 384_000  # the highest rate of real recording equipment
BLOCK_FRAMES = 65_536
PARALLEL_DECODES = 2
_decoding = threading.BoundedSemaphore(PARALLEL_DECODES)


class AudioTooLarge(ValueError):
    """The audio decodes to more than the service accepts; the message says what and why."""


def read_audio_bounded(data: bytes, max_seconds: float) -> tuple[np.ndarray, int]:
    """``data`` decoded to float32 ``[channels, samples]`` and its rate, the same samples as
    ``musicgen_train.audio.read_audio``; ``AudioTooLarge`` when it is longer than
    ``max_seconds``, has too many channels or too high a rate (decoding stops there)."""
    with _decoding, sf.SoundFile(io.BytesIO(data)) as audio_file:
        rate, channels = int(audio_file.samplerate), int(audio_file.channels)
        if channels > MAX_CHANNELS:
            raise AudioTooLarge(f"has {channels} channels; at most {MAX_CHANNELS} are accepted")
        if rate > MAX_SAMPLE_RATE:
            raise AudioTooLarge(f"has a sample rate of {rate} Hz; at most {MAX_SAMPLE_RATE} Hz")
        limit = int(max_seconds * rate)
        too_long = f"is longer than {max_seconds:g} s, the longest audio this service uses"
        if audio_file.frames > limit:  # what the header claims: refused before any decoding
            raise AudioTooLarge(f"{too_long} (its header says {audio_file.frames / rate:.1f} s)")
        blocks, frames = [], 0
        while True:
            block = audio_file.read(BLOCK_FRAMES, dtype="float32", always_2d=True)
            if not len(block):
                break
            frames += len(block)
            if frames > limit:  # the header said less than the file holds
                raise AudioTooLarge(too_long)
            blocks.append(block)
    audio = np.concatenate(blocks) if blocks else np.zeros((0, channels), np.float32)
    return np.ascontiguousarray(audio.T), rate
