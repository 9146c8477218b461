"""``audio.unreadable_format``: containers libsndfile cannot open, named by their first bytes."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from musicgen_train.audio import read_audio, unreadable_format


@pytest.mark.parametrize(
    ("head", "words"),
    [
        (b"\x00\x00\x00\x20ftypM4A ", "MP4/M4A"),
        (b"\x00\x00\x00\x18ftypmp42", "MP4/M4A"),
        (b"\x30\x26\xb2\x75\x8e\x66\xcf\x11\xa6\xd9", "WMA"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81", "WebM/Matroska"),
        (b"MAC \x96\x0f\x00\x00", "Monkey's Audio"),
        (b"wvpk\x2c\x00\x00\x00", "WavPack"),
        (b"\xff\xf1\x50\x80\x02\x1f", "AAC"),  # ADTS: MPEG-4, no CRC
        (b"\xff\xf9\x50\x80\x02\x1f", "AAC"),  # MPEG-2, no CRC
        (b"\xff\xf0\x50\x80\x02\x1f", "AAC"),  # MPEG-4 with CRC
        (b"\xff\xf8\x50\x80\x02\x1f", "AAC"),  # MPEG-2 with CRC
    ],
)
def test_containers_libsndfile_cannot_open_are_named(head, words):
    data = head + bytes(64)
    assert words in unreadable_format(data)
    with pytest.raises(Exception):  # noqa: B017 (what soundfile raises varies by version)
        read_audio(data)  # and libsndfile indeed cannot open them


@pytest.mark.parametrize("head", [b"\xff\xfb\x90\x64", b"\xff\xf3\x40\xc4", b"\xff\xfd\x00"])
def test_mp3_frame_headers_are_not_taken_for_aac(head):
    # MP3 shares ADTS's sync word; its layer bits (1-3) tell it apart, and libsndfile reads it.
    assert unreadable_format(head + bytes(64)) is None


READABLE = [("WAV", "PCM_16"), ("FLAC", None), ("OGG", None), ("MP3", None), ("AIFF", "PCM_16")]


@pytest.mark.parametrize(("fmt", "subtype"), [*READABLE, ("AU", None)])
def test_what_libsndfile_reads_is_never_named_unreadable(fmt, subtype):
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(8000, np.float32), 16000, format=fmt, subtype=subtype)
    data = buffer.getvalue()
    assert unreadable_format(data) is None
    assert read_audio(data)[1] == 16000
