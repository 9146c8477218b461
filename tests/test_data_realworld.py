"""Prepare on the files real collections hold: each case here failed on the code before it.

Truncated MP3s, caption files saved by Windows tools (BOM, UTF-16, Latin-1, upper-case
suffixes), Excel's semicolon CSV, manifests written on Windows, the same song copied twice, and
report lines that must read right.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from musicgen_train.cli import main
from musicgen_train.data.cache import TokenCache
from musicgen_train.data.folder import iter_folder
from musicgen_train.data.items import AudioItem, SkippedItem
from musicgen_train.data.manifest import iter_manifest
from musicgen_train.data.stream import conformed_blocks, scan
from musicgen_train.data.validate import validate_stream


def signal(seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Seeded noise under a tone: every file differs, and repeated audio would show."""
    t = np.arange(int(round(seconds * rate))) / rate
    noise = np.random.default_rng(seed).standard_normal(t.size)
    mono = 0.3 * np.sin(2 * np.pi * (200 + 20 * seed) * t) + 0.05 * noise
    return np.stack([mono] * channels, axis=1).astype(np.float32)


def write(path: Path, seconds: float = 1.5, rate: int = 16000, seed: int = 0, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, signal(seconds, rate, seed=seed), rate, **kw)
    return path


def prepare_args(source: Path, output: Path, *extra: str) -> list[str]:
    return [
        "prepare",
        "data=folder",
        f"data.source={source}",
        f"data.output={output}",
        "data.segment_seconds=1",
        "data.min_duration=0.3",
        "data.progress=false",
        "model=tiny",
        *extra,
    ]


def report_of(output: Path) -> dict:
    return json.loads((output / "prepare_report.json").read_text())


def first_segments(output: Path) -> dict[str, dict]:
    return {e["key"]: e for e in TokenCache(output).manifest() if e["segment"] == 0}


def collect(source: Path) -> tuple[dict[str, AudioItem], dict[str, str]]:
    items = list(iter_folder(source) if source.is_dir() else iter_manifest(source))
    ok = {i.key: i for i in items if isinstance(i, AudioItem)}
    skipped = {Path(i.source).name: i.reason for i in items if isinstance(i, SkippedItem)}
    return ok, skipped


# --- a truncated MP3 ---------------------------------------------------------------------------


@pytest.mark.skipif("MP3" not in sf.available_formats(), reason="libsndfile without MP3")
def test_a_truncated_mp3_is_as_long_as_what_decodes(tmp_path):
    # An MP3 cut short (an interrupted download) keeps its Xing header, which promises the whole
    # song. SoundFile.blocks trusted it and yielded its buffer's stale samples again and again
    # up to the promised length: 2 s of real audio became 4 s, the last block repeated.
    whole = tmp_path / "whole.mp3"
    sf.write(whole, signal(4.0, 44100, channels=2), 44100, format="MP3")
    cut = tmp_path / "music" / "cut.mp3"
    cut.parent.mkdir()
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    whole.unlink()
    decoded, rate = sf.read(cut, dtype="float32", always_2d=True)
    assert sf.info(cut).frames == 4 * 44100 and len(decoded) < 2.1 * 44100  # the header lies
    with open(cut, "rb") as handle:
        info = scan(handle)
    assert info.frames == len(decoded)
    with open(cut, "rb") as handle:
        blocks = np.concatenate(list(conformed_blocks(handle, rate, 2)), axis=1)
    np.testing.assert_array_equal(blocks, decoded.T)

    output = tmp_path / "cache"
    assert main(prepare_args(cut.parent, output, "data.valid_fraction=0")) == 0
    entries = TokenCache(output).manifest()
    duration = len(decoded) / rate  # about 1.95 s: one window and a tail of >= 0.8 s
    assert {e["file_duration"] for e in entries} == {round(duration, 6)}
    assert [(e["offset"], e["duration"]) for e in entries] == [
        (0.0, 1.0),
        (1.0, pytest.approx(duration - 1.0, abs=1e-4)),
    ]


BOM_JSON = json.dumps({"description": "Bom", "genre": "rock"}).encode()

# --- caption files saved by other tools -------------------------------------------------------


def test_caption_files_in_the_encodings_windows_tools_write(tmp_path):
    # Each was lost before: a BOM made the JSON invalid (the song skipped) or stayed in the
    # caption; Latin-1, Windows-1252 and UTF-16 skipped the song; .TXT/.JSON were not found.
    music = tmp_path / "music"
    sidecars = {
        "bomjson.json": b"\xef\xbb\xbf" + BOM_JSON,
        "bomtxt.txt": "\ufeffa caption Notepad saved".encode(),
        "latin.txt": "café con música".encode("latin-1"),
        "cp1252.txt": "“smart quotes” – Excel".encode("cp1252"),
        "utf16.txt": "Unicode Notepad, 日本".encode("utf-16"),
        "upper.TXT": b"upper-case sidecar",
        "upperjson.JSON": json.dumps({"description": "upper json"}).encode(),
        "binary.txt": bytes(range(256)),
        "mixed.txt": "café, ".encode() + "thé".encode("latin-1"),  # UTF-8 with a Latin-1 word
    }
    for i, (name, raw) in enumerate(sidecars.items()):
        stem = name.rsplit(".", 1)[0]
        write(music / f"{stem}.{'WAV' if stem.startswith('upper') else 'wav'}", seed=i)
        (music / name).write_bytes(raw)
    ok, skipped = collect(music)
    assert {key: item.metadata for key, item in ok.items()} == {
        "bomjson.wav": {"description": "Bom", "genre": "rock"},
        "bomtxt.wav": {"description": "a caption Notepad saved"},
        "cp1252.wav": {"description": "“smart quotes” – Excel"},
        "latin.wav": {"description": "café con música"},
        "upper.WAV": {"description": "upper-case sidecar"},
        "upperjson.WAV": {"description": "upper json"},
        "utf16.wav": {"description": "Unicode Notepad, 日本"},
    }
    # Bytes that are text in no encoding we can be sure of still skip their song, with the
    # reason: binary data, and UTF-8 with a broken byte (Windows-1252 would garble its "é").
    assert sorted(skipped) == ["binary.wav", "mixed.wav"]
    assert skipped["binary.wav"].startswith("sidecar binary.txt is not readable text")
    assert skipped["mixed.wav"].startswith("sidecar mixed.txt is not readable text")

    output = tmp_path / "cache"
    assert main(prepare_args(music, output)) == 0
    captions = {key: e["caption"] for key, e in first_segments(output).items()}
    assert captions["bomjson.wav"] == "Bom. rock"
    assert captions["bomtxt.wav"] == "a caption Notepad saved"
    assert captions["latin.wav"] == "café con música"
    assert report_of(output)["files_ok"] == 7


def test_an_excel_csv_with_semicolons_latin1_and_backslashes(tmp_path):
    # Excel in a comma-decimal locale writes ";" between cells, in Windows-1252, and people
    # type Windows paths: before, the table had "no file_name column" and every song lost its
    # caption.
    music = tmp_path / "music"
    write(music / "audio" / "a.flac", seed=1)
    write(music / "audio" / "b.wav", seed=2)
    table = "file_name; description ;genre\r\naudio\\a.flac;Chanson française;pop\r\n"
    table += 'audio/b.wav;"Mélodie; douce";jazz\r\n'
    (music / "metadata.csv").write_bytes(table.encode("cp1252"))
    ok, skipped = collect(music)
    assert skipped == {}
    assert ok["audio/a.flac"].metadata == {"description": "Chanson française", "genre": "pop"}
    assert ok["audio/b.wav"].metadata == {"description": "Mélodie; douce", "genre": "jazz"}
    (music / "metadata.csv").write_text("file_name,genre\naudio/a.flac,rock\n")  # still read
    assert collect(music)[0]["audio/a.flac"].metadata == {"genre": "rock"}


def test_a_manifest_written_on_windows(tmp_path):
    # A BOM before line 1 and CRLF line ends (Notepad), a relative path with backslashes, a
    # drive-letter path, and caption fields written into the lines themselves.
    egs = tmp_path / "egs"
    write(egs / "audio" / "a.wav", seed=1)
    write(egs / "audio" / "b.wav", seed=2)
    write(egs / "audio" / "c.wav", seed=3)
    (egs / "audio" / "c.json").write_text(json.dumps({"description": "from the sidecar"}))
    lines = [
        {"path": "audio/a.wav", "duration": 1.5, "sample_rate": 16000, "amplitude": None},
        {"path": "audio\\b.wav", "description": "Lo-fi loop", "genre": "hip hop", "bpm": 84},
        {"path": "C:\\music\\d.wav", "duration": 3.0},
        {"path": "audio/c.wav", "description": "from the line", "weight": 1.0},
    ]
    text = "\ufeff" + "\r\n".join(json.dumps(line) for line in lines) + "\r\n"
    (egs / "data.jsonl").write_bytes(text.encode())
    ok, skipped = collect(egs / "data.jsonl")
    assert {key: item.metadata for key, item in ok.items()} == {
        "audio/a.wav": {},
        "audio\\b.wav": {"description": "Lo-fi loop", "genre": "hip hop", "bpm": 84},
        "audio/c.wav": {"description": "from the sidecar"},  # audiocraft's sidecar wins
    }
    assert ok["audio\\b.wav"].path == egs / "audio" / "b.wav"
    assert skipped == {
        "data.jsonl:3": "path 'C:\\\\music\\\\d.wav' does not exist: a Windows path; write the "
        "paths as this machine sees them, or relative to the manifest's folder"
    }


def test_a_caption_table_named_data_jsonl_says_what_it_is(tmp_path):
    # A folder's metadata table saved as data.jsonl makes the folder a manifest: each line was
    # "the line has no path", which does not say what to do.
    music = tmp_path / "music"
    write(music / "a.wav")
    (music / "data.jsonl").write_text(json.dumps({"file_name": "a.wav", "text": "a hum"}) + "\n")
    ok, skipped = collect(music / "data.jsonl")
    assert ok == {}
    assert skipped == {
        "data.jsonl:1": "the line has no path, but a file_name: a folder's caption table is "
        "called metadata.jsonl, not data.jsonl (audiocraft manifests name each file in a path)"
    }


# --- the same song twice ----------------------------------------------------------------------


def test_a_copied_song_is_read_once_and_never_on_both_sides_of_the_split(tmp_path):
    # "best of/intro.wav" and "album/intro.wav", byte for byte: before, both were encoded,
    # trained on twice, and with a split one copy could sit in valid and the other in train.
    music = tmp_path / "music"
    original = write(music / "album" / "intro.wav", seconds=2.0, seed=1)
    (music / "best of").mkdir()
    (music / "best of" / "intro.wav").write_bytes(original.read_bytes())
    write(music / "album" / "outro.wav", seconds=2.0, seed=2)
    output = tmp_path / "cache"
    assert main(prepare_args(music, output, "data.valid_fraction=0.5")) == 0
    report = report_of(output)
    assert report["files_ok"] == 2
    assert report["skipped"] == [
        {
            "path": str(music / "best of" / "intro.wav"),
            "reason": f"the same audio as {original} (identical bytes): read once",
        }
    ]
    assert set(first_segments(output)) == {"album/intro.wav", "album/outro.wav"}
    # A re-run says the same and encodes nothing; deleting the original brings the copy in.
    assert main(prepare_args(music, output, "data.valid_fraction=0.5")) == 0
    again = report_of(output)
    assert again["skipped"] == report["skipped"] and again["removed"] == []
    assert again["files_encoded"] == 0
    original.unlink()
    assert main(prepare_args(music, output, "data.valid_fraction=0.5")) == 0
    assert set(first_segments(output)) == {"best of/intro.wav", "album/outro.wav"}
    assert report_of(output)["skipped"] == []


# --- report lines that must read right --------------------------------------------------------


def test_a_reason_never_prints_a_value_equal_to_its_limit(tmp_path):
    # A WAV cut in half by a full disk holds 0.9998 s: it read "too short: 1.00 s <
    # data.min_duration=1.0 s". Values are rounded down now, so the line shows why.
    short = write(tmp_path / "short.wav", seconds=1.0 - 3 / 16000)
    quiet = tmp_path / "quiet.wav"
    peak = 10 ** (-60.04 / 20)  # -60.04 dBFS: printed as -60.0 < -60.0 before
    sf.write(quiet, np.full((16000, 1), peak, dtype=np.float32), 16000, subtype="FLOAT")

    def reason(path: Path) -> str:
        item = AudioItem(key=path.name, source=str(path), path=path)
        return validate_stream(item, min_duration=1.0, silence_db=-60.0).reason

    assert reason(short) == "too short: 0.99 s < data.min_duration=1.0 s"
    assert reason(quiet) == "silent: peak -60.1 dBFS < data.silence_db=-60.0 dBFS"


# --- a file still being written ---------------------------------------------------------------


class ShrinkingEncoder:
    """The real codec; on its first call it cuts ``path`` short on disk, as a copy or a download
    still under way, or a user's editor saving over the file, does while prepare reads it."""

    def __init__(self, inner, path: Path, keep_bytes: int):
        self.inner, self.path, self.keep_bytes, self.calls = inner, path, keep_bytes, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode(self, audio):
        self.calls += 1
        if self.calls == 1:
            with open(self.path, "r+b") as handle:
                handle.truncate(self.keep_bytes)
        return self.inner.encode(audio)


def test_a_file_that_changes_while_it_is_read_is_skipped_not_fatal(tmp_path):
    # Before, stream_segments' "the file changed while read" was a RuntimeError that nothing
    # caught: one file still being copied in stopped the whole prepare.
    from musicgen_train.config import load_config
    from musicgen_train.data.encode import CodecEncoder
    from musicgen_train.data.prepare import prepare

    music = tmp_path / "music"
    growing = write(music / "a_growing.wav", seconds=12.0, seed=1)  # > 2 decoded blocks
    write(music / "b_done.wav", seconds=2.0, seed=2)
    output = tmp_path / "cache"
    cfg = load_config(prepare_args(music, output, "data.encode_batch_size=3")[1:])
    encoder = ShrinkingEncoder(CodecEncoder.from_config(cfg), growing, 44 + 2 * 16000 * 5)
    report = prepare(cfg, encoder=encoder)
    assert report["files_ok"] == 1
    [skipped] = report["skipped"]
    assert skipped["path"] == str(growing)
    assert skipped["reason"].startswith("changed while it was read (")
    assert skipped["reason"].endswith("): re-run prepare once it is complete")
    assert set(first_segments(output)) == {"b_done.wav"}
    # 8.19 s decoded: windows 0-5 went to the codec in two batches of 3 before the file came up
    # short; windows 6 and 7, still waiting for a batch, are dropped, not encoded (2 + 6 = 8).
    assert report["segments_encoded"] == 8 and encoder.calls == 3
    # Once the file is complete, a re-run takes it: 5 s, five 1 s segments.
    assert main(prepare_args(music, output)) == 0
    entries = [e for e in TokenCache(output).manifest() if e["key"] == "a_growing.wav"]
    assert [e["offset"] for e in entries] == [0.0, 1.0, 2.0, 3.0, 4.0]


# --- re-running after the collection changed --------------------------------------------------


def codes_by_key(output: Path) -> dict[str, list[np.ndarray]]:
    from musicgen_train.data.cache import ShardReader

    reader, codes = ShardReader(output), {}
    for entry in TokenCache(output).manifest():
        codes.setdefault(entry["key"], []).append(reader.codes(entry))
    return codes


def test_a_line_added_to_a_manifest_encodes_only_its_file(tmp_path):
    # Manifest lines were keyed by their line number: one line added at the top made every
    # file below it a new file, encoded again (hours with the real codec), and reported each
    # as "no longer in the source" although it was still there.
    egs = tmp_path / "egs"
    for i, name in enumerate(("a", "b", "c")):
        write(egs / f"{name}.wav", seconds=2.0, seed=i)
    manifest = egs / "data.jsonl"
    manifest.write_text("".join(json.dumps({"path": f"{n}.wav"}) + "\n" for n in "bc"))
    output = tmp_path / "cache"
    args = prepare_args(manifest, output)
    assert main(args) == 0
    before = codes_by_key(output)
    assert sorted(before) == ["b.wav", "c.wav"]
    manifest.write_text("".join(json.dumps({"path": f"{n}.wav"}) + "\n" for n in "abc"))
    assert main(args) == 0
    report = report_of(output)
    assert (report["files_encoded"], report["files_reused"], report["removed"]) == (1, 2, [])
    assert report["segments_encoded"] == 2  # a.wav's two 1 s windows only
    after = codes_by_key(output)
    for key in before:
        np.testing.assert_array_equal(np.stack(after[key]), np.stack(before[key]))


def test_a_moved_or_renamed_file_keeps_its_codes(tmp_path):
    # Sorting a collection into folders renamed every file: all were encoded again.
    music = tmp_path / "music"
    write(music / "take1.wav", seconds=2.0, seed=1)
    write(music / "take2.wav", seconds=3.0, seed=2)
    output = tmp_path / "cache"
    assert main(prepare_args(music, output)) == 0
    before = codes_by_key(output)
    (music / "2019").mkdir()
    (music / "take1.wav").rename(music / "2019" / "take1.wav")
    (music / "take2.wav").rename(music / "take2 (final).wav")
    assert main(prepare_args(music, output)) == 0
    report = report_of(output)
    assert (report["files_encoded"], report["files_reused"]) == (0, 2)
    assert report["segments_encoded"] == 0
    assert report["removed"] == [
        {"path": str(music / name), "reason": "no longer in the source: dropped from the manifest"}
        for name in ("take1.wav", "take2.wav")
    ]
    entries = TokenCache(output).manifest()
    assert len({e["id"] for e in entries}) == len(entries) == 5
    assert {e["key"]: e["origin"] for e in entries} == {
        "2019/take1.wav": str(music / "2019" / "take1.wav"),
        "take2 (final).wav": str(music / "take2 (final).wav"),
    }
    after = codes_by_key(output)
    np.testing.assert_array_equal(np.stack(after["2019/take1.wav"]), np.stack(before["take1.wav"]))
    np.testing.assert_array_equal(
        np.stack(after["take2 (final).wav"]), np.stack(before["take2.wav"])
    )


# --- what a folder's file names say -----------------------------------------------------------


def test_oga_wave_and_bwf_are_read_and_midi_and_phone_memos_are_named(tmp_path):
    # .oga (Ogg's audio suffix; Wikimedia Commons' music), .wave and .bwf were left out without
    # a word; .mid, .amr, .3gp, .m4b neither read nor mentioned.
    music = tmp_path / "music"
    write(music / "commons.oga", seed=1, format="OGG")
    write(music / "studio.wave", seed=2, format="WAV")
    write(music / "broadcast.BWF", seed=3, format="WAV")
    for name in ("theme.mid", "memo.amr", "clip.3gp", "book.m4b", "README.txt"):
        (music / name).write_bytes(b"\x00" * 64)
    ok, skipped = collect(music)
    assert sorted(ok) == ["broadcast.BWF", "commons.oga", "studio.wave"]
    assert skipped == {
        "book.m4b": ".m4b cannot be read with libsndfile: convert it to flac or wav",
        "clip.3gp": ".3gp cannot be read with libsndfile: convert it to flac or wav",
        "memo.amr": ".amr cannot be read with libsndfile: convert it to flac or wav",
        "theme.mid": ".mid is MIDI (notes, not sound): render it to flac or wav to train on it",
    }
    output = tmp_path / "cache"
    assert main(prepare_args(music, output)) == 0
    assert report_of(output)["files_ok"] == 3


def test_stricter_limits_apply_to_files_the_cache_already_holds(tmp_path):
    # A user raises data.min_duration and data.silence_db to drop the junk of their first run:
    # before, the cached codes of the short and the quiet file were reused without a check,
    # and only a fresh cache would drop them (the cache depended on its history).
    music = tmp_path / "music"
    write(music / "long.wav", seconds=3.0, seed=1)
    write(music / "short.wav", seconds=0.6, seed=2)
    quiet = music / "quiet.wav"
    sf.write(quiet, 0.01 * signal(3.0, 16000, seed=3), 16000)  # peak -46.2 dBFS
    output = tmp_path / "cache"
    assert main(prepare_args(music, output, "data.min_duration=0.5")) == 0
    assert report_of(output)["files_ok"] == 3
    strict = prepare_args(music, output, "data.min_duration=1.0", "data.silence_db=-40")
    assert main(strict) == 0
    report = report_of(output)
    assert (report["files_ok"], report["files_encoded"]) == (1, 0)
    reasons = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert reasons["short.wav"] == "too short: 0.60 s < data.min_duration=1.0 s"
    assert reasons["quiet.wav"] == "silent: peak -46.2 dBFS < data.silence_db=-40.0 dBFS"
    assert {Path(r["path"]).name for r in report["removed"]} == {"short.wav", "quiet.wav"}
    assert set(first_segments(output)) == {"long.wav"}
    # The same answer as a cache made from scratch with these limits.
    fresh = tmp_path / "fresh"
    assert main(prepare_args(music, fresh, "data.min_duration=1.0", "data.silence_db=-40")) == 0
    assert {Path(s["path"]).name: s["reason"] for s in report_of(fresh)["skipped"]} == reasons
    # Looser limits again: they come back (encoded again: their codes left with the manifest).
    assert main(prepare_args(music, output, "data.min_duration=0.5")) == 0
    assert (report_of(output)["files_ok"], report_of(output)["files_encoded"]) == (3, 2)


def test_a_cache_made_before_peaks_were_kept_is_checked_once(tmp_path):
    # Caches written before this change have no file_peak: the file is scanned once (not
    # encoded), and its peak stored, so the next run needs no scan.
    music = tmp_path / "music"
    write(music / "song.wav", seconds=2.0, seed=1)
    output = tmp_path / "cache"
    assert main(prepare_args(music, output)) == 0
    manifest = output / "manifest.jsonl"
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    peak = lines[0]["file_peak"]
    assert 0.3 < peak < 0.6
    old = "".join(
        json.dumps({k: v for k, v in e.items() if k != "file_peak"}) + "\n" for e in lines
    )
    manifest.write_text(old)
    assert main(prepare_args(music, output)) == 0
    report = report_of(output)
    assert (report["files_reused"], report["files_encoded"]) == (1, 0)
    assert {e["file_peak"] for e in TokenCache(output).manifest()} == {peak}
    manifest.write_text(old)
    # Its peak is below -3 dBFS: with no other file, "no usable audio" (exit 2), and a report.
    assert main(prepare_args(music, output, "data.silence_db=-3")) == 2
    assert report_of(output)["skipped"][0]["reason"].startswith("silent: peak -")


def test_an_empty_source_leaves_the_cache_as_it_was(tmp_path, capsys):
    # The music drive was not mounted: its mount point is an empty folder. Before, prepare
    # dropped every file from the manifest and deleted every shard (hours of encoding with the
    # real codec), then said "no usable audio ... 0 file(s) skipped".
    drive = tmp_path / "mnt" / "music"
    write(drive / "a.wav", seconds=2.0, seed=1)
    write(drive / "b.wav", seconds=2.0, seed=2)
    output = tmp_path / "cache"
    assert main(prepare_args(drive, output)) == 0
    before = {p.name: p.read_bytes() for p in [output / "manifest.jsonl", *output.glob("shards/*")]}
    drive.rename(tmp_path / "mnt" / "unplugged")
    drive.mkdir()
    capsys.readouterr()
    assert main(prepare_args(drive, output)) == 2
    err = capsys.readouterr().err
    assert f"no usable audio in data.source={drive}: it holds no audio file" in err
    assert "the token cache keeps its 2 earlier file(s)" in err
    after = {p.name: p.read_bytes() for p in [output / "manifest.jsonl", *output.glob("shards/*")]}
    assert after == before
    assert report_of(output)["removed"] == []
    drive.rmdir()
    (tmp_path / "mnt" / "unplugged").rename(drive)
    assert main(prepare_args(drive, output)) == 0
    assert (report_of(output)["files_reused"], report_of(output)["files_encoded"]) == (2, 0)


def test_a_recording_whose_header_was_never_finished_says_so(tmp_path):
    # A recorder (or OBS, or a program piping WAV) that stopped before writing the header's
    # lengths leaves "data size 0": libsndfile reads no samples, and the reason was the same
    # "empty: no audio samples" as for a truly empty file, though 2 s of audio are there.
    path = write(tmp_path / "take.wav", seconds=2.0, rate=32000, subtype="PCM_16")
    raw = bytearray(path.read_bytes())
    at = raw.find(b"data")
    raw[at + 4 : at + 8] = bytes(4)
    path.write_bytes(raw)
    item = AudioItem(key="take.wav", source=str(path), path=path)
    reason = validate_stream(item, min_duration=1.0, silence_db=-60.0).reason
    assert reason == (
        "empty: the header counts no audio samples, yet the file holds 0.1 MB (a recording "
        "whose header was never finished? repair it, e.g. with sox --ignore-length, to use it)"
    )


def test_a_sample_rate_no_recording_has_is_a_corrupt_header(tmp_path):
    # A header that says 100 Hz was taken at its word: 2 s of "audio" resampled to 32 kHz and
    # encoded as a rumble. 8 kHz (telephone) is still music to train on.
    reasons = {}
    for rate in (100, 8000):
        path = tmp_path / f"at-{rate}.wav"
        sf.write(path, np.random.default_rng(0).uniform(-0.5, 0.5, (2 * rate, 1)), rate)
        item = AudioItem(key=path.name, source=str(path), path=path)
        reasons[rate] = getattr(validate_stream(item, min_duration=1.0, silence_db=-60.0),
                                "reason", None)  # fmt: skip
    assert reasons == {
        100: "sample rate 100 Hz is below 4000 Hz: a corrupt header? (real recordings are "
        "8 kHz or more)",
        8000: None,
    }


def test_a_second_prepare_of_one_cache_waits_then_reuses_what_the_first_encoded(tmp_path, capsys):
    # Two runs on one folder (two recipes, DDP ranks) both wrote the same cache at once; now the
    # second waits for the lock the first holds, then finds every file encoded.
    import threading

    from musicgen_train.data.prepare import PREPARE_LOCK
    from musicgen_train.locks import exclusive

    source, output = tmp_path / "music", tmp_path / "cache"
    for seed in range(2):
        write(source / f"song{seed}.wav", seed=seed)
    assert main(prepare_args(source, output)) == 0  # the first prepare
    results = []
    with exclusive(output / PREPARE_LOCK):  # as a first prepare still at work
        second = threading.Thread(target=lambda: results.append(main(prepare_args(source, output))))
        second.start()
        second.join(timeout=5)
        assert second.is_alive() and not results  # it waits; it does not write beside us
    second.join(timeout=120)
    assert results == [0]
    assert f"token cache {output} is being prepared by pid" in capsys.readouterr().err
    assert report_of(output)["files_encoded"] == 0  # all reused


def test_a_float_file_louder_than_full_scale_is_scaled_to_fit_and_reported(tmp_path):
    # A DAW's float bounce may peak above 1.0; it went to the codec as it was, with no line.
    source, output = tmp_path / "music", tmp_path / "cache"
    loud = signal(1.5, 16000)
    loud *= 3.0 / np.abs(loud).max()
    source.mkdir()
    sf.write(source / "loud.wav", loud, 16000, subtype="FLOAT")
    sf.write(source / "scaled.wav", loud / 3.0, 16000, subtype="FLOAT")  # the same, at peak 1
    write(source / "plain.wav", seed=5)
    assert main(prepare_args(source, output)) == 0
    report = report_of(output)
    assert report["adjusted"] == [
        {"path": str(source / "loud.wav"),
         "reason": "peak +9.5 dBFS, above full scale: scaled down 9.5 dB"}
    ]  # fmt: skip
    segments = first_segments(output)
    assert segments["loud.wav"]["file_gain"] == pytest.approx(1 / 3, abs=1e-6)
    assert segments["plain.wav"]["file_gain"] == 1.0
    # Scaled, the loud file is encoded exactly as its copy at full scale is.
    from musicgen_train.data.cache import ShardReader

    reader = ShardReader(output)
    assert np.array_equal(reader.codes(segments["loud.wav"]), reader.codes(segments["scaled.wav"]))


def test_a_cache_is_not_turned_over_to_another_folder_under_the_same_name(tmp_path, capsys):
    # data.name=mine for one collection, then for another: the second prepare dropped every file
    # of the first from the shared cache ("no longer in the source"), and its codes were gone.
    first, second, output = tmp_path / "first", tmp_path / "second", tmp_path / "cache"
    write(first / "a.wav", seed=1)
    write(second / "b.wav", seed=2)
    assert main(prepare_args(first, output)) == 0
    held = report_of(output)
    assert held["source_path"] == str(first.resolve())
    capsys.readouterr()
    assert main(prepare_args(second, output)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"holds {first.resolve()}, not data.source={second}" in err[0]
    assert "data.name" in err[0] and "data.overwrite=true" in err[0]
    assert report_of(output) == held  # untouched
    assert main(prepare_args(second, output, "data.overwrite=true")) == 0
    assert report_of(output)["source_path"] == str(second.resolve())
    # A folder moved or renamed (its old path gone) is the same collection: codes are reused.
    second.rename(tmp_path / "moved")
    assert main(prepare_args(tmp_path / "moved", output)) == 0
    assert report_of(output)["files_reused"] == 1
