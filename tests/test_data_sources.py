"""Every data source end to end on small inputs written here: discovery, metadata, decoding."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from musicgen_train.audio import encode_audio_bytes, read_audio, write_audio
from musicgen_train.data.captions import build_caption
from musicgen_train.data.items import AudioItem, SkippedItem
from musicgen_train.data.sources import iter_source, normalize_metadata
from musicgen_train.errors import UserError

CAPTION = {"template": "{description}. {genre}, {bpm} bpm, {key}", "default": "jazz"}


def tone(seconds=0.5, rate=16000, channels=1, freq=440.0):
    t = np.arange(int(seconds * rate)) / rate
    mono = 0.3 * np.sin(2 * np.pi * freq * t)
    return np.stack([mono] * channels).astype(np.float32)


def write(path: Path, audio: np.ndarray, rate: int, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio.T, rate, **kwargs)
    return path


def collect(source, work_dir, **data):
    items = list(iter_source({"source": str(source), **data}, work_dir))
    ok = {item.key: item for item in items if isinstance(item, AudioItem)}
    skipped = [item for item in items if isinstance(item, SkippedItem)]
    return ok, skipped


def caption_of(item):
    return build_caption(item.metadata, CAPTION)


@pytest.fixture
def folder(tmp_path):
    """Every format, rate and caption source in one nested folder, plus bad files."""
    root = tmp_path / "music"
    write(root / "a.wav", tone(rate=44100, channels=2), 44100)
    (root / "a.json").write_text(json.dumps({"description": "ignored: the table row wins"}))
    write(root / "rock" / "b.flac", tone(rate=22050), 22050)
    sidecar = {"description": "Loud guitars.", "genre": "rock", "bpm": 140.0, "key": "E minor"}
    (root / "rock" / "b.json").write_text(json.dumps(sidecar))
    write(root / "rock" / "deep" / "c.ogg", tone(rate=32000), 32000, format="OGG")
    (root / "rock" / "deep" / "c.txt").write_text("a quiet organ\n")
    write(root / "d.mp3", tone(rate=48000), 48000, format="MP3")
    write(root / "e.opus", tone(rate=48000), 48000, format="OGG", subtype="OPUS")
    # what old samplers and Apple tools write (CPython's own test recordings are AU and AIFC)
    write(root / "f.au", tone(rate=11025, channels=2), 11025, format="AU")
    write(root / "g.aifc", tone(rate=11025), 11025, format="AIFF", subtype="ULAW")
    write(root / "h.caf", tone(rate=44100), 44100, format="CAF")
    (root / "i.wv").write_bytes(b"wvpk")
    (root / "notes.wav").write_bytes(b"%PDF-1.4 this is a pdf with an audio name")
    (root / "song.m4a").write_bytes(b"\x00\x00\x00 ftypM4A ")
    (root / "cover.jpg").write_bytes(b"\xff\xd8\xff")
    write(root / ".hidden" / "x.wav", tone(), 16000)
    rows = [{"file_name": "a.wav", "description": "Soft strings", "genre": "classical"}]
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_folder_finds_every_format_nested_and_takes_captions_in_order(folder, tmp_path):
    ok, skipped = collect(folder, tmp_path)
    assert sorted(ok) == [
        "a.wav", "d.mp3", "e.opus", "f.au", "g.aifc", "h.caf", "notes.wav", "rock/b.flac",
        "rock/deep/c.ogg",
    ]  # fmt: skip
    # metadata.jsonl row > sidecar json > sidecar txt > default caption
    assert caption_of(ok["a.wav"]) == "Soft strings. classical"
    assert caption_of(ok["rock/b.flac"]) == "Loud guitars. rock, 140 bpm, E minor"
    assert caption_of(ok["rock/deep/c.ogg"]) == "a quiet organ"
    assert caption_of(ok["d.mp3"]) == "jazz"
    assert ok["d.mp3"].metadata == {}
    # with data.caption.default set, a file without metadata gets it as its description, so
    # that estimated fields add to it instead of replacing it
    ok, _ = collect(folder, tmp_path, caption={"default": "lounge"})
    assert ok["d.mp3"].metadata == {"description": "lounge"}
    assert build_caption({**ok["d.mp3"].metadata, "bpm": 96}, CAPTION) == "lounge. 96 bpm"
    assert ok["rock/deep/c.ogg"].metadata == {"description": "a quiet organ"}
    # every real audio file decodes at its own rate and channel count
    expected = {"a.wav": (44100, 2), "rock/b.flac": (22050, 1), "rock/deep/c.ogg": (32000, 1),
                "d.mp3": (48000, 1), "e.opus": (48000, 1), "f.au": (11025, 2),
                "g.aifc": (11025, 1), "h.caf": (44100, 1)}  # fmt: skip
    for key, (rate, channels) in expected.items():
        audio, got_rate = read_audio(ok[key].path)
        assert (got_rate, audio.shape[0]) == (rate, channels), key
        assert audio.shape[1] >= 0.45 * rate
    # the pdf with an audio name is yielded for validation to report; m4a is reported here
    assert ok["notes.wav"].path.read_bytes().startswith(b"%PDF")
    assert [(Path(s.source).name, "libsndfile" in s.reason) for s in skipped] == [
        ("i.wv", True),
        ("song.m4a", True),
    ]


def test_metadata_csv_with_text_column_and_bad_rows(tmp_path):
    root = tmp_path / "clips"
    write(root / "one.wav", tone(), 16000)
    write(root / "two.wav", tone(), 16000)
    write(root / "three.wav", tone(), 16000)
    write(root / "four.wav", tone(), 16000)
    (root / "readme.txt").write_text("not audio")
    (root / "metadata.csv").write_text(
        "file_name,text,genre,bpm\n"
        "one.wav,a sunny tune,pop,120\n"
        "missing.wav,gone,pop,1\n"
        "two.wav,,jazz,\n"
        "three.wav,x,y,z,extra\n"
        "readme.txt,words,none,1\n"
        '"four.wav","two\nlines",blues,80\n'
    )
    ok, skipped = collect(root, tmp_path)
    assert sorted(ok) == ["four.wav", "one.wav", "three.wav", "two.wav"]
    assert caption_of(ok["four.wav"]) == "two lines. blues, 80 bpm"  # a quoted cell on 2 lines
    assert ok["one.wav"].metadata == {"description": "a sunny tune", "genre": "pop", "bpm": "120"}
    assert caption_of(ok["one.wav"]) == "a sunny tune. pop, 120 bpm"
    assert ok["two.wav"].metadata == {"genre": "jazz"}  # empty cells are left out
    assert ok["three.wav"].metadata == {}  # its row was rejected: no metadata, default caption
    reasons = {Path(s.source).name: s.reason for s in skipped}
    assert set(reasons) == {"metadata.csv:3", "metadata.csv:5", "metadata.csv:6"}
    assert "does not exist" in reasons["metadata.csv:3"]
    assert "more cells" in reasons["metadata.csv:5"]
    assert "audio extension" in reasons["metadata.csv:6"]


def test_metadata_jsonl_malformed_lines_are_reported_with_file_and_line(tmp_path):
    root = tmp_path / "clips"
    write(root / "sub" / "a.wav", tone(), 16000)
    write(root / "b.wav", tone(), 16000)
    write(tmp_path / "outside.wav", tone(), 16000)
    (root / "metadata.jsonl").write_text(
        '{"file_name": "sub/a.wav", "genre": "funk", "moods": ["warm", ""]}\n'
        "{not json\n"
        "\n"
        '["a", "list"]\n'
        '{"genre": "no file name"}\n'
        '{"file_name": "sub/a.wav", "genre": "twice"}\n'
        '{"file_name": "../outside.wav"}\n'
    )
    ok, skipped = collect(root, tmp_path)
    assert ok["sub/a.wav"].metadata == {"genre": "funk", "moods": ["warm", ""]}
    assert build_caption(ok["sub/a.wav"].metadata, {"template": "{genre}, {moods}"}) == "funk, warm"
    assert ok["b.wav"].metadata == {}
    reasons = {s.source.rsplit("/", 1)[-1]: s.reason for s in skipped}
    assert sorted(reasons) == [f"metadata.jsonl:{n}" for n in (2, 4, 5, 6, 7)]
    assert "not valid JSON" in reasons["metadata.jsonl:2"]
    assert "list" in reasons["metadata.jsonl:4"]
    assert "no file_name" in reasons["metadata.jsonl:5"]
    assert "twice" in reasons["metadata.jsonl:6"]
    assert "not inside" in reasons["metadata.jsonl:7"]


def test_broken_sidecar_json_skips_its_file_with_the_reason(tmp_path):
    write(tmp_path / "x" / "a.wav", tone(), 16000)
    (tmp_path / "x" / "a.json").write_text("{oops")
    write(tmp_path / "x" / "b.wav", tone(), 16000)
    (tmp_path / "x" / "b.json").write_text("[1, 2]")
    ok, skipped = collect(tmp_path / "x", tmp_path)
    assert ok == {}
    assert [(Path(s.source).name, s.reason.split(" (")[0]) for s in skipped] == [
        ("a.wav", "sidecar a.json is not valid JSON"),
        ("b.wav", "sidecar b.json holds a list, not an object"),
    ]


def test_audiocraft_manifest_with_sidecars(tmp_path):
    audio_dir = tmp_path / "audio"
    a = write(audio_dir / "a.wav", tone(rate=32000), 32000)
    write(audio_dir / "b.flac", tone(rate=24000), 24000)
    (audio_dir / "a.json").write_text(json.dumps(
        {"title": "A", "artist": "me", "genre": "house", "moods": ["happy"], "bpm": 124,
         "key": "G major", "description": "Piano house.", "keywords": "", "instrument": "piano"}
    ))  # fmt: skip
    info = tmp_path / "infos" / "b-info.json"
    info.parent.mkdir()
    info.write_text(json.dumps({"description": "Dub techno", "genre": "techno"}))
    egs = tmp_path / "egs" / "train"
    egs.mkdir(parents=True)
    lines = [
        {"path": str(a), "duration": 0.5, "sample_rate": 32000, "amplitude": None,
         "weight": None, "info_path": None},
        {"path": "../../audio/b.flac", "duration": 0.5, "sample_rate": 24000,
         "info_path": str(info)},
        {"path": str(audio_dir / "gone.wav"), "duration": 3.0},
        {"duration": 1.0},
        {"path": str(a), "info_path": "/nowhere/info.json"},
    ]  # fmt: skip
    text = "".join(json.dumps(line) + "\n" for line in lines) + "{broken\n"
    (egs / "data.jsonl").write_text(text)
    for source in (egs, egs / "data.jsonl"):  # the folder (audiocraft's egs dir) or the file
        ok, skipped = collect(source, tmp_path)
        assert [item.path for item in ok.values()] == [a, egs / "../../audio/b.flac"]
        first, second = ok.values()
        assert first.metadata["artist"] == "me" and "keywords" not in first.metadata
        assert caption_of(first) == "Piano house. house, 124 bpm, G major"
        assert caption_of(second) == "Dub techno. techno"
        assert read_audio(second.path)[1] == 24000
        reasons = [(s.source.rsplit(":", 1)[-1], s.reason) for s in skipped]
        assert [line for line, _ in reasons] == ["3", "4", "5", "6"]
        assert "does not exist" in reasons[0][1] and "no path" in reasons[1][1]
        assert "info_path" in reasons[2][1] and "not valid JSON" in reasons[3][1]
    gz = tmp_path / "data.jsonl.gz"
    gz.write_bytes(gzip.compress(json.dumps(lines[0]).encode() + b"\n"))
    ok, skipped = collect(gz, tmp_path)
    assert [item.path for item in ok.values()] == [a] and skipped == []


def _hf_rows(tmp_path):
    import datasets

    ref = write(tmp_path / "ref.wav", tone(rate=8000), 8000)
    audio = [
        {"bytes": encode_audio_bytes(tone(rate=16000, freq=220), 16000), "path": "x.wav"},
        {"bytes": encode_audio_bytes(tone(rate=22050, channels=2), 22050, "flac"), "path": None},
        {"bytes": None, "path": str(ref)},  # save_to_disk embeds the file's bytes
    ]
    table = {"audio": audio, "caption": ["low hum", "", "a stereo tone"],
             "genre": ["drone", "test", None], "bpm": [60, None, 90]}  # fmt: skip
    return datasets.Dataset.from_dict(table).cast_column("audio", datasets.Audio(decode=False))


def test_hf_dataset_saved_to_disk_yields_bytes_that_soundfile_decodes(tmp_path):
    import datasets

    # An Audio column saved with decode=True (as hub datasets are) must not be decoded on read.
    ds = _hf_rows(tmp_path).cast_column("audio", datasets.Audio())
    ds.save_to_disk(str(tmp_path / "hf"))
    ok, skipped = collect(tmp_path / "hf", tmp_path)
    assert skipped == [] and sorted(ok) == ["train/000000", "train/000001", "train/000002"]
    rates = [read_audio(item.data)[1] for item in ok.values()]
    assert rates == [16000, 22050, 8000]
    assert read_audio(ok["train/000001"].data)[0].shape[0] == 2
    first, second, third = ok.values()
    assert first.metadata == {"description": "low hum", "genre": "drone", "bpm": 60}
    assert caption_of(second) == "test" and caption_of(third) == "a stereo tone. 90 bpm"
    hz = np.argmax(np.abs(np.fft.rfft(read_audio(first.data)[0][0]))) * 16000 / 8000
    assert hz == pytest.approx(220, abs=2)


def test_hf_dataset_dict_split_and_columns(tmp_path):
    import datasets

    ds = _hf_rows(tmp_path).rename_column("audio", "sound").rename_column("genre", "label")
    splits = datasets.DatasetDict({"train": ds.select([1, 2]), "test": ds.select([0])})
    splits.save_to_disk(str(tmp_path / "dd"))
    hf = {"audio_column": "sound", "text_column": "label", "split": "test"}
    ok, skipped = collect(tmp_path / "dd", tmp_path, hf=hf)
    assert list(ok) == ["test/000000"] and skipped == []
    # the chosen text column becomes the description; other text columns stay as they are
    assert ok["test/000000"].metadata == {"description": "drone", "caption": "low hum", "bpm": 60}
    with pytest.raises(UserError, match=r"data.hf.split='valid'.*\['test', 'train'\]"):
        collect(tmp_path / "dd", tmp_path, hf={**hf, "split": "valid"})
    # without an "audio" column, the dataset's one Audio column is read (whatever its name)
    assert list(collect(tmp_path / "dd", tmp_path, hf={"split": "test"})[0]) == ["test/000000"]
    datasets.Dataset.from_dict({"text": ["a"]}).save_to_disk(str(tmp_path / "no_audio"))
    with pytest.raises(UserError, match=r"data.hf.audio_column='audio' is not a column"):
        collect(tmp_path / "no_audio", tmp_path, hf={"split": "train"})
    with pytest.raises(UserError, match=r"data.hf.text_column='lyrics'"):
        collect(tmp_path / "dd", tmp_path, hf={**hf, "text_column": "lyrics"})


def test_unknown_sources_fail_with_one_clear_line(tmp_path):
    with pytest.raises(UserError, match="data.source is empty"):
        collect("", tmp_path)
    (tmp_path / "song.wav").write_bytes(b"x")
    with pytest.raises(UserError, match="is a file but not a .jsonl manifest"):
        collect(tmp_path / "song.wav", tmp_path)
    for missing in (tmp_path / "nowhere", "./music", "~/no/such/folder", "songs.jsonl"):
        with pytest.raises(UserError, match="there is no such folder or file"):
            collect(missing, tmp_path)
    # "owner/name": tried as a hub dataset id, which cannot be reached offline
    with pytest.raises(UserError, match="nobody/no-such-dataset.*nor a Hugging Face") as err:
        collect("nobody/no-such-dataset", tmp_path)
    assert "\n" not in str(err.value)


def test_demo_source_writes_the_demo_once_into_the_work_dir(tmp_path):
    ok, skipped = collect("demo", tmp_path)
    assert skipped == [] and len(ok) == 24
    assert all(item.path.is_relative_to(tmp_path / "demo_data" / "seed0") for item in ok.values())
    item = ok["techno/techno_00.wav"]
    assert item.metadata["genre"] == "techno" and item.metadata["bpm"] == 128
    stamp = item.path.stat().st_mtime_ns
    again, _ = collect("demo", tmp_path)
    assert again["techno/techno_00.wav"].path.stat().st_mtime_ns == stamp  # not rewritten


def test_normalize_metadata_moves_a_ready_caption_to_description():
    row = {"text": " hello ", "genre": "", "moods": [], "bpm": 0, "extra": {"a": 1}}
    assert normalize_metadata(row) == {"description": " hello ", "bpm": 0}
    both = {"description": "d", "prompt": "p"}
    assert normalize_metadata(both) == both
    chosen = normalize_metadata({"genre": "g", "prompt": "p", "description": "d"}, "genre")
    assert chosen == {"description": "g", "prompt": "p"}


def test_write_audio_helpers_round_trip_for_test_inputs(tmp_path):
    path = write_audio(tmp_path / "t.flac", tone(rate=16000), 16000)
    audio, rate = read_audio(path)
    assert rate == 16000 and np.max(np.abs(audio - tone(rate=16000))) < 1e-3


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"source": 3}, "data.source=3 is not allowed"),
        ({"demo_seed": "x"}, "data.demo_seed='x'"),
        ({"demo_seed": True}, "data.demo_seed=True"),
        ({"hf": {"audio_column": ""}}, "data.hf.audio_column='' is not allowed"),
        ({"hf": {"split": None}}, "data.hf.split=None"),
        ({"hf": {"text_column": 5}}, "data.hf.text_column=5"),
    ],
)
def test_source_config_checks_name_key_and_value(data, message):
    from omegaconf import OmegaConf

    from musicgen_train.data.sources import validate_source_config
    from musicgen_train.errors import ConfigError

    ok = {"source": "demo", "demo_seed": 0, "hf": {"audio_column": "audio", "split": "train"}}
    validate_source_config(OmegaConf.create({"data": ok}))
    with pytest.raises(ConfigError, match=message):
        validate_source_config(OmegaConf.create({"data": {**ok, **data}}))


def test_the_shipped_example_manifests_read_as_documented(tmp_path):
    import shutil

    examples = Path(__file__).resolve().parent.parent / "data" / "examples"
    for table in ("metadata.jsonl", "metadata.csv"):
        root = tmp_path / table
        shutil.copytree(examples / "audio", root / "audio")
        shutil.copy(examples / table, root / table)
        write(root / "audio" / "take_01.wav", tone(), 16000)
        write(root / "audio" / "take_02.flac", tone(), 16000)
        write(root / "live" / "encore.mp3", tone(), 16000, format="MP3")
        write(root / "audio" / "take_03.wav", tone(), 16000)
        ok, skipped = collect(root, tmp_path)
        assert skipped == []
        captions = {key: caption_of(item) for key, item in ok.items()}
        assert captions == {
            "audio/take_01.wav": "Mellow jazz trio with brushed drums. jazz, 96 bpm, Bb major",
            "audio/take_02.flac": "Upbeat funk groove with slap bass. funk, 108 bpm",
            "audio/take_03.wav": "Mellow jazz trio with brushed drums, late at night",
            "live/encore.mp3": "rock",
        }
    # data.jsonl names /datasets/jazz/...: rebuild that tree here
    jazz = tmp_path / "jazz"
    write(jazz / "audio" / "take_01.wav", tone(), 16000)
    write(jazz / "audio" / "take_02.flac", tone(), 16000)
    shutil.copy(examples / "audio" / "take_01.json", jazz / "audio" / "take_01.json")
    (jazz / "info").mkdir()
    (jazz / "info" / "take_02.json").write_text(json.dumps({"description": "Funk", "bpm": 108}))
    manifest = tmp_path / "data.jsonl"
    manifest.write_text((examples / "data.jsonl").read_text().replace("/datasets/jazz", str(jazz)))
    ok, skipped = collect(manifest, tmp_path)
    assert skipped == []
    assert [caption_of(item) for item in ok.values()] == [
        "Mellow jazz trio with brushed drums. jazz, 96 bpm, Bb major",
        "Funk. 108 bpm",
    ]


@pytest.mark.parametrize("kind", ["hf", "manifest"])
def test_prepare_reads_each_source_end_to_end(kind, tmp_path):
    """Source -> prepare with the tiny codec -> token cache whose captions come from metadata."""
    from musicgen_train.config import load_config
    from musicgen_train.data.cache import TokenCache
    from musicgen_train.data.prepare import prepare

    if kind == "hf":
        _hf_rows(tmp_path).save_to_disk(str(tmp_path / "hf"))
        source, data = tmp_path / "hf", "hf"
        expected = {"low hum. drone, 60 bpm", "test", "a stereo tone. 90 bpm"}
    else:
        a = write(tmp_path / "a.wav", tone(rate=32000), 32000)
        write(tmp_path / "b.ogg", tone(rate=44100, channels=2, freq=330), 44100, format="OGG")
        (tmp_path / "b.json").write_text(json.dumps({"genre": "ambient", "key": "D minor"}))
        lines = [{"path": str(a)}, {"path": "b.ogg"}, {"path": "missing.wav"}]
        (tmp_path / "data.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        source, data = tmp_path / "data.jsonl", "manifest"
        expected = {"jazz", "ambient, D minor"}
    cfg = load_config(
        [f"data={data}", f"data.source={source}", f"data.output={tmp_path / 'cache'}",
         "data.segment_seconds=0.5", "data.min_duration=0.1", "data.progress=false",
         "data.caption.default=jazz", "model=tiny",
         "data.caption.template='{description}. {genre}, {bpm} bpm, {key}'"], validate=False,
    )  # fmt: skip
    report = prepare(cfg)
    entries = TokenCache(cfg.data.output).manifest()
    assert {entry["caption"] for entry in entries} == expected
    assert report["files_ok"] == len(expected)
    skipped = [Path(s["path"]).name for s in report["skipped"]]
    assert skipped == ([] if kind == "hf" else ["data.jsonl:3"])


def test_hf_columns_of_plain_bytes_or_paths(tmp_path):
    import datasets

    raw = encode_audio_bytes(tone(rate=16000), 16000)
    datasets.Dataset.from_dict({"wav": [raw], "prompt": ["bytes"]}).save_to_disk(
        str(tmp_path / "bytes")
    )
    ok, _ = collect(tmp_path / "bytes", tmp_path, hf={"audio_column": "wav"})
    assert ok["train/000000"].data == raw
    assert ok["train/000000"].metadata == {"description": "bytes"}
    real = write(tmp_path / "real.wav", tone(), 16000)
    paths = {"file": [str(real), str(tmp_path / "gone.wav")]}
    datasets.Dataset.from_dict(paths).save_to_disk(str(tmp_path / "paths"))
    ok, skipped = collect(tmp_path / "paths", tmp_path, hf={"audio_column": "file"})
    assert ok["train/000000"].path == real
    assert len(skipped) == 1 and "gone.wav" in skipped[0].reason
    assert skipped[0].source.endswith("[train][1]")


def test_unreadable_tables_and_manifests_are_named(tmp_path):
    write(tmp_path / "x" / "a.wav", tone(), 16000)
    (tmp_path / "x" / "metadata.csv").write_text("name,genre\na.wav,rock\n")
    (tmp_path / "x" / "a.txt").write_bytes(b"\xff\xfe\xfa not utf-8")
    ok, skipped = collect(tmp_path / "x", tmp_path)
    assert ok == {}
    assert [(Path(s.source).name, s.reason.split(" (")[0]) for s in skipped] == [
        ("metadata.csv:1", "metadata.csv has no file_name column"),
        ("a.wav", "sidecar a.txt is not readable text"),
    ]
    (tmp_path / "bad.jsonl").write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(UserError, match="cannot read the manifest .*bad.jsonl"):
        collect(tmp_path / "bad.jsonl", tmp_path)
