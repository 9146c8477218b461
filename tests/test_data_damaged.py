"""Damaged files, odd file names, sidecars as tagging tools name them, downloaded dataset repos:
what a real collection holds. Each case here failed on the code before it."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from musicgen_train.cli import main
from musicgen_train.data.folder import iter_folder
from musicgen_train.data.items import AudioItem, SkippedItem
from musicgen_train.data.manifest import iter_manifest
from musicgen_train.data.sources import iter_source
from musicgen_train.data.stream import AudioScan, conformed_blocks, open_item, read_head
from musicgen_train.data.validate import validate_stream

RATE = 16000


def tone_bytes(seconds: float, fmt: str, seed: int = 0, rate: int = RATE, **kw) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    noise = 0.05 * np.random.default_rng(seed).standard_normal(t.size)
    audio = (0.3 * np.sin(2 * np.pi * (220 + 30 * seed) * t) + noise).astype(np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, format=fmt, **kw)
    return buffer.getvalue()


def cut_in_half(raw: bytes) -> bytes:
    return raw[: len(raw) // 2]


def prepare(source: Path, output: Path) -> dict:
    args = ["prepare", "data=folder", f"data.source={source}", f"data.output={output}",
            "data.segment_seconds=1", "data.min_duration=0.3", "data.progress=false",
            "data.valid_fraction=0", "model=tiny"]  # fmt: skip
    assert main(args) == 0
    return json.loads((output / "prepare_report.json").read_text())


def by_name(lines: list[dict]) -> dict[str, str]:
    return {Path(line["path"]).name: line["reason"] for line in lines}


# --- truncated and damaged files ---------------------------------------------------------------


def test_truncated_flac_wav_and_ogg_keep_what_decodes_with_a_report_line(tmp_path, capfd):
    # An interrupted copy or download. A FLAC was refused whole ("flac decoder lost sync"), a
    # WAV and an Ogg were kept shortened without a word; an MP3 kept its decodable part.
    music = tmp_path / "music"
    music.mkdir()
    (music / "cut.flac").write_bytes(cut_in_half(tone_bytes(4.0, "FLAC")))
    (music / "cut.wav").write_bytes(cut_in_half(tone_bytes(4.0, "WAV", seed=1)))
    (music / "cut.ogg").write_bytes(cut_in_half(tone_bytes(12.0, "OGG", seed=2)))
    (music / "whole.flac").write_bytes(tone_bytes(2.0, "FLAC", seed=3))
    report = prepare(music, tmp_path / "cache")
    assert report["skipped"] == [] and report["files_ok"] == 4
    adjusted = by_name(report["adjusted"])
    assert sorted(adjusted) == ["cut.flac", "cut.ogg", "cut.wav"]  # not the whole one
    assert adjusted["cut.flac"].startswith("truncated or damaged: kept the first 1.")
    assert adjusted["cut.flac"].endswith("of the 4.00 s its header promises (decoding "
                                         "stopped: flac decoder lost sync.)")  # fmt: skip
    assert adjusted["cut.wav"] == ("truncated or damaged: kept the first 2.00 s that decode, "
                                   "of the 4.00 s its header promises")  # fmt: skip
    assert re.fullmatch(r"truncated: the file ends mid-stream; kept the 5\.\d\d s that decode",
                        adjusted["cut.ogg"])  # fmt: skip
    manifest = (tmp_path / "cache" / "manifest.jsonl").read_text().splitlines()
    lines = [json.loads(line) for line in manifest]
    durations = {Path(e["source"]).name: e["file_duration"] for e in lines}
    assert 1.0 < durations["cut.flac"] < 2.0 and durations["cut.wav"] == pytest.approx(2.0, 1e-3)
    # no metadata: every file has the default caption, which the report and the log point out
    assert report["captions"] == {"distinct": 1, "most_common": [["music", 4]]}
    assert "4 of 4 files have the same caption 'music'" in capfd.readouterr().err


def test_a_flac_damaged_inside_its_first_block_keeps_its_start(tmp_path):
    # The first block of 65536 frames fails: everything before the damage is read in small steps
    # (before, the file was undecodable; with tempo estimation, read_head raised mid-prepare).
    path = tmp_path / "short.flac"
    path.write_bytes(cut_in_half(tone_bytes(2.0, "FLAC")))  # 1 s of good audio, then nothing
    with open(path, "rb") as handle:
        audio, rate = read_head(handle, 120.0)
    assert rate == RATE and 0.5 * RATE < audio.shape[-1] <= RATE


def test_a_flac_written_to_a_pipe_without_its_length_is_read_whole():
    # ffmpeg or a recorder writing FLAC to a pipe leaves STREAMINFO's total samples at 0:
    # libsndfile reads to the end, then raises "Internal psf_fseek() failed", and the whole
    # file was refused as undecodable.
    raw = bytearray(tone_bytes(2.0, "FLAC"))
    raw[8 + 13] &= 0xF0  # STREAMINFO (after "fLaC" and its block header): 36 bits of length
    raw[8 + 14 : 8 + 18] = bytes(4)
    item = AudioItem(key="piped.flac", source="piped.flac", data=bytes(raw))
    info = validate_stream(item, min_duration=0.3, silence_db=-60.0)
    assert isinstance(info, AudioScan) and info.truncated is None
    assert 1.9 * RATE < info.frames <= 2 * RATE
    with open_item(item) as handle:  # the encoding pass decodes exactly as many frames
        assert sum(b.shape[-1] for b in conformed_blocks(handle, RATE, 1)) == info.frames


@pytest.mark.skipif("MP3" not in sf.available_formats(), reason="libsndfile without MP3")
def test_mp3_decoder_messages_name_their_file(tmp_path, capfd):
    # libmpg123 printed "Warning: Xing stream size off by more than 1%..." on stderr without a
    # file name, once per time the file was opened: nobody could tell which of 5,000 was broken.
    music = tmp_path / "music"
    music.mkdir()
    (music / "cut.mp3").write_bytes(cut_in_half(tone_bytes(4.0, "MP3", rate=44100)))
    (music / "fine.mp3").write_bytes(tone_bytes(2.0, "MP3", seed=1, rate=44100))
    capfd.readouterr()
    report = prepare(music, tmp_path / "cache")
    err = capfd.readouterr().err
    xing = [line for line in err.splitlines() if "Xing stream size" in line]
    assert xing and all(str(music / "cut.mp3") in line for line in xing)  # never without it
    warnings = by_name(report["warnings"])
    assert list(warnings) == ["cut.mp3"]
    assert warnings["cut.mp3"].startswith("the decoder reported: Warning: Xing stream size off")
    assert f"warning {music / 'cut.mp3'}: the decoder reported: Warning: Xing" in err
    assert by_name(report["adjusted"])["cut.mp3"].endswith("of the 4.00 s its header promises")


# --- caption sidecars and file names ----------------------------------------------------------


def items_of(source: Path) -> tuple[dict[str, AudioItem], dict[str, str]]:
    items = list(iter_folder(source) if source.is_dir() else iter_manifest(source))
    ok = {i.key: i for i in items if isinstance(i, AudioItem)}
    return ok, {Path(i.source).name: i.reason for i in items if isinstance(i, SkippedItem)}


def test_sidecars_named_after_the_whole_audio_file_name(tmp_path):
    for name in ("a.wav", "b.flac", "c.wav", "c.mp3"):
        (tmp_path / name).write_bytes(b"RIFF")  # discovery does not decode
    (tmp_path / "a.wav.txt").write_text("a tagging tool's caption")
    (tmp_path / "b.flac.json").write_text(json.dumps({"description": "json", "genre": "folk"}))
    (tmp_path / "c.txt").write_text("shared by c.wav and c.mp3")
    (tmp_path / "c.wav.txt").write_text("only c.wav")  # the whole name wins
    ok, skipped = items_of(tmp_path)
    assert skipped == {}
    captions = {key: item.metadata for key, item in ok.items()}
    assert captions == {
        "a.wav": {"description": "a tagging tool's caption"},
        "b.flac": {"description": "json", "genre": "folk"},
        "c.mp3": {"description": "shared by c.wav and c.mp3"},
        "c.wav": {"description": "only c.wav"},
    }


def test_names_typed_in_nfc_find_files_copied_from_a_mac_in_nfd(tmp_path):
    # "café.wav" from a Mac is "cafe" + a combining accent; a caption table typed elsewhere
    # spells it with one code point: the row was "file_name 'café.wav' does not exist".
    nfd = unicodedata.normalize("NFD", "café.wav")
    (tmp_path / nfd).write_bytes(b"RIFF")
    (tmp_path / "日本の歌.flac").write_bytes(b"fLaC")
    rows = [{"file_name": "café.wav", "description": "accordion"},
            {"file_name": "日本の歌.flac", "description": "ballad"}]  # fmt: skip
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    (tmp_path / "metadata.jsonl").write_text(text, encoding="utf-8")
    ok, skipped = items_of(tmp_path)
    assert skipped == {}
    assert {key: item.metadata["description"] for key, item in ok.items()} == {
        nfd: "accordion",
        "日本の歌.flac": "ballad",
    }
    manifest = tmp_path / "data.jsonl"
    manifest.write_text(json.dumps({"path": "café.wav"}) + "\n")
    ok, skipped = items_of(manifest)
    assert list(ok) == ["café.wav"] and ok["café.wav"].path.name == nfd and skipped == {}


def test_a_file_name_that_is_not_utf8_is_skipped_with_its_reason(tmp_path):
    # A Latin-1 name from an old zip or CD rip: prepare crashed with a UnicodeEncodeError.
    (tmp_path / os.fsdecode(b"caf\xe9.wav")).write_bytes(tone_bytes(1.0, "WAV"))
    (tmp_path / "fine.wav").write_bytes(tone_bytes(1.0, "WAV", seed=1))
    ok, skipped = items_of(tmp_path)
    assert list(ok) == ["fine.wav"]
    (reason,) = skipped.values()
    assert reason.startswith("the path is not valid UTF-8 (b'") and "caf\\xe9.wav" in reason
    assert "convmv -f latin1 -t utf-8" in reason


# --- Hugging Face datasets --------------------------------------------------------------------


def test_a_downloaded_dataset_repo_with_its_own_column_names(tmp_path, caplog):
    # `huggingface-cli download --repo-type dataset ... --local-dir ds`: parquet files under
    # data/. It was read as a folder of audio ("no usable audio"); an audio column not called
    # "audio" failed; a caption column of another name gave every clip the caption "music".
    import datasets

    audio = [{"bytes": tone_bytes(1.0, "FLAC", seed=i), "path": f"{i}.flac"} for i in range(2)]
    ds = datasets.Dataset.from_dict({"song": audio, "main_caption": ["rock riff", "jazz trio"]})
    (tmp_path / "ds" / "data").mkdir(parents=True)
    ds.cast_column("song", datasets.Audio()).to_parquet(
        str(tmp_path / "ds" / "data" / "train-00000-of-00001.parquet")
    )
    data_cfg = {"source": str(tmp_path / "ds"), "hf": {"audio_column": "audio", "split": "train"}}
    with caplog.at_level(logging.INFO, logger="musicgen_train.data.hf"):
        items = list(iter_source(data_cfg, tmp_path))
    assert [type(i) for i in items] == [AudioItem, AudioItem]
    assert sf.info(io.BytesIO(items[0].data)).format == "FLAC"
    assert "reading its Audio column 'song'" in caplog.text
    assert "has no caption column" in caplog.text and "['main_caption']" in caplog.text
    data_cfg["hf"]["text_column"] = "main_caption"
    items = list(iter_source(data_cfg, tmp_path))
    assert [i.metadata["description"] for i in items] == ["rock riff", "jazz trio"]
