"""Streaming audio over HTTP: a WAV header with unknown sizes, then raw PCM as it is decoded.

Players accept a RIFF/WAVE header whose RIFF and data sizes are 0xFFFFFFFF ("until the end of
the stream"); sending a whole WAV file per chunk would break them. The worker publishes decoded
PCM of a job to a ``LiveStream`` that every HTTP reader of that job follows from the beginning.
"""

from __future__ import annotations

import asyncio
import io
import struct
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import numpy as np
import soundfile as sf

UNKNOWN_SIZE = 0xFFFFFFFF
POLL_SECONDS = 0.02
RAW_RATE = 32_000  # RAW has no header: the rate written is never read
CHECK_SECONDS = 1.0  # how often an idle reader asks the store whether the job ended


def wav_stream_header(sample_rate: int, channels: int, bits: int = 16) -> bytes:
    block_align = channels * bits // 8
    fmt = struct.pack(
        "<4sIHHIIHH",
        b"fmt ",
        16,
        1,
        channels,
        sample_rate,
        sample_rate * block_align,
        block_align,
        bits,
    )
    return (
        b"RIFF"
        + struct.pack("<I", UNKNOWN_SIZE)
        + b"WAVE"
        + fmt
        + b"data"
        + struct.pack("<I", UNKNOWN_SIZE)
    )


def to_pcm16(audio: np.ndarray) -> bytes:
    """float ``[channels, samples]`` in [-1, 1] -> interleaved little-endian 16-bit PCM.

    Converted by libsndfile's own writer (headerless RAW), the one that writes the job's WAV and
    FLAC files, so a streamed sample equals the file's bit for bit (a numpy ``* 32767`` differs
    from libsndfile's scaling in about half the samples by one step)."""
    buffer = io.BytesIO()
    clipped = np.clip(np.atleast_2d(np.asarray(audio, dtype=np.float32)), -1.0, 1.0)
    sf.write(buffer, clipped.T, RAW_RATE, format="RAW", subtype="PCM_16", endian="LITTLE")
    return buffer.getvalue()


class LiveStream:
    """PCM chunks of one job, appended by the worker thread and read by any number of readers."""

    def __init__(self):
        self.chunks: list[bytes] = []
        self.done = False
        self.lock = threading.Lock()

    def publish(self, pcm: bytes) -> None:
        with self.lock:
            self.chunks.append(pcm)

    def close(self) -> None:
        self.done = True

    async def follow(
        self, finished: Callable[[], Awaitable[bool]] | None = None
    ) -> AsyncIterator[bytes]:
        """Every chunk from the first, as they come, until the stream closes, or until
        ``finished()`` says the job is over without this stream being closed (another replica
        ran it)."""
        sent, idle_since = 0, time.monotonic()
        while True:
            with self.lock:
                new, done = self.chunks[sent:], self.done
            for chunk in new:
                yield chunk
            sent += len(new)
            if done and not new:
                return
            if new:
                idle_since = time.monotonic()
                continue
            if finished is not None and time.monotonic() - idle_since > CHECK_SECONDS:
                idle_since = time.monotonic()
                if await finished():
                    with self.lock:
                        rest = self.chunks[sent:]
                    for chunk in rest:
                        yield chunk
                    return
            await asyncio.sleep(POLL_SECONDS)


class StreamBroker:
    """Live streams by job id, for the jobs some client streams."""

    def __init__(self):
        self.streams: dict[str, LiveStream] = {}
        self.lock = threading.Lock()

    def open(self, job_id: str) -> LiveStream:
        with self.lock:
            return self.streams.setdefault(job_id, LiveStream())

    def get(self, job_id: str) -> LiveStream | None:
        with self.lock:
            return self.streams.get(job_id)

    def close(self, job_id: str) -> None:
        """The job is over: readers drain what they have; later readers use the stored file."""
        with self.lock:
            stream = self.streams.pop(job_id, None)
        if stream is not None:
            stream.close()
