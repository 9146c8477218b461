"""Decoding a file as far as it goes, and saying which file the decoder complained about.

Real collections hold files cut short (an interrupted download or copy) and files with damaged
frames. Every format keeps what decodes: an MP3 decoder resyncs by itself, but libsndfile's
FLAC decoder raises ("flac decoder lost sync") at the first broken frame, losing the whole
block being read; ``blocks`` then goes back and reads on in small steps, so only the audio
after the damage is lost. ``truncation_note`` is the report's line on how much was kept.

libmpg123 prints its warnings ("Warning: Xing stream size off by more than 1%", "Note: Illegal
Audio-MPEG-Header ... Trying to resync") straight to the process's stderr, from C, without the
file's name: with 5,000 files nobody can tell which one is broken. ``captured_stderr`` points
file descriptor 2 at a temporary file around each libsndfile call, so that the lines are kept
with the file being read and reported with its path.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import soundfile as sf

STEP_FRAMES = 1024  # after a decoding error: read on in steps this small, to keep the most
MAX_MESSAGES = 3  # decoder lines quoted in a report line (a broken MP3 prints one per frame)


@contextmanager
def captured_stderr(lines: list[str]) -> Iterator[None]:
    """Whatever C code writes to stderr inside the block is appended to ``lines`` instead."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no stderr at all: nothing to capture
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode("utf-8", errors="replace")
            lines.extend(line.strip() for line in text.splitlines() if line.strip())


def open_sound(handle, messages: list[str]) -> sf.SoundFile:
    """``sf.SoundFile(handle)`` with the decoder's messages captured into ``messages``."""
    with captured_stderr(messages):
        return sf.SoundFile(handle)


class Decoding:
    """A file decoded block by block until the decoder runs dry or fails for good (a context
    manager; ``audio`` is the open SoundFile). Not ``SoundFile.blocks``: it counts on the
    header's frame count, and where a file holds fewer frames (a truncated MP3 whose Xing header
    promises the whole song) it yields its buffer's stale samples again up to the promised
    length. Here a file is as long as what decodes."""

    def __init__(self, handle, messages: list[str]):
        self.handle = handle
        self.messages = messages
        self.audio = open_sound(handle, messages)  # raises when the file cannot be opened
        self.frames = 0  # decoded so far
        self.error: str | None = None  # why decoding stopped before the end, if it did

    def __enter__(self) -> Decoding:
        return self

    def __exit__(self, *_exc) -> None:
        self.audio.close()

    def blocks(self, size: int) -> Iterator[np.ndarray]:
        """``[n, channels]`` float32 blocks of ``size`` frames. Raises what soundfile raises
        when not even the start of the file decodes (it is then refused as undecodable)."""
        while True:
            try:
                with captured_stderr(self.messages):
                    block = self.audio.read(size, dtype="float32", always_2d=True)
            except sf.LibsndfileError as err:
                # the first error says what is wrong; a later one is the retry's
                self.error = self.error or str(err).strip().removeprefix("Error : ")
                if size > STEP_FRAMES and self._reopen_at(self.frames, size):
                    size = STEP_FRAMES  # the failed block held good audio before the damage
                    continue
                if not self.frames:
                    raise
                return
            if not block.shape[0]:
                return
            self.frames += block.shape[0]
            yield block

    def _reopen_at(self, frames: int, size: int) -> bool:
        """A fresh decoder, read up to ``frames`` in the blocks that decoded before: a decoder
        that failed cannot always seek back (libsndfile's FLAC cannot)."""
        try:
            self.audio.close()
            self.handle.seek(0)
            self.audio = open_sound(self.handle, [])  # its messages were captured the first time
            done = 0
            while done < frames:
                got = self.audio.read(min(size, frames - done), dtype="float32").shape[0]
                if not got:
                    return False
                done += got
        except (sf.LibsndfileError, RuntimeError, OSError):
            return False
        return True


# libsndfile's log of a header whose sizes run past the file: "data : 352800 (should be 176378)"
_HEADER_SIZE = re.compile(r"(\d+) \(should be (\d+)\)")


def promised_frames(audio: sf.SoundFile) -> int:
    """The frames the file's header promises. libsndfile shortens a WAV/AIFF/AU whose data
    chunk runs past the end of the file to what is there, and logs the header's size: that log
    line gives back the promised length."""
    frames = int(audio.frames)
    sizes = _HEADER_SIZE.findall(audio.extra_info)
    if sizes and frames:
        written, actual = (int(n) for n in sizes[-1])  # the last one is the data chunk's
        if 0 < actual < written:
            return round(frames * written / actual)
    return frames


_OGG_CUT = re.compile(r"File ended unexpectedly|Last page lacks an end-of-stream bit")


UNKNOWN_LENGTH = 1 << 62  # libsndfile's frame count of a stream whose header has no length


def truncation_note(decoding: Decoding) -> str | None:
    """The report's line on a file that holds less audio than it should, or None."""
    audio = decoding.audio
    rate, kept, error = audio.samplerate, decoding.frames, decoding.error
    promised = promised_frames(audio)
    stopped = f" (decoding stopped: {error})" if error else ""
    if promised >= UNKNOWN_LENGTH:  # a FLAC written to a pipe (total samples 0): libsndfile
        # reads it to its end, then fails to seek past it; that error is its end, not damage
        if error is None or "psf_fseek" in error:
            return None
    elif promised - kept > max(0.01 * promised, 0.01 * rate):
        return (f"truncated or damaged: kept the first {kept / rate:.2f} s that decode, of the "
                f"{promised / rate:.2f} s its header promises{stopped}")  # fmt: skip
    if _OGG_CUT.search(audio.extra_info):  # Ogg's pages hold no total length: no "of ... s"
        return f"truncated: the file ends mid-stream; kept the {kept / rate:.2f} s that decode"
    if error:
        return f"damaged: kept the first {kept / rate:.2f} s that decode{stopped}"
    return None


def messages_note(messages: list[str]) -> str | None:
    """The report's line quoting what the decoder printed about a file, or None."""
    distinct = list(dict.fromkeys(messages))
    if not distinct:
        return None
    quoted = "; ".join(distinct[:MAX_MESSAGES])
    more = len(distinct) - MAX_MESSAGES
    return f"the decoder reported: {quoted}" + (f" (and {more} more)" if more > 0 else "")
