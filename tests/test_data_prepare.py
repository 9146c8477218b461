"""The prepare stage: validation, segmentation, split, EnCodec codes in a resumable token cache."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from musicgen_train.cli import main
from musicgen_train.config import load_config
from musicgen_train.data.cache import ShardReader, TokenCache
from musicgen_train.data.encode import CodecEncoder
from musicgen_train.data.items import AudioItem
from musicgen_train.data.prepare import assign_splits, prepare, prepare_items
from musicgen_train.data.segment import SegmentPlan, cut_segments
from musicgen_train.data.validate import validate
from musicgen_train.errors import ConfigError, UserError

SR = 32000


def tone(seconds: float, freq: float, rate: int = SR, channels: int = 1, seed: int = 0):
    t = np.arange(int(round(seconds * rate))) / rate
    noise = np.random.default_rng(seed).standard_normal(t.size)
    mono = 0.3 * np.sin(2 * np.pi * freq * t) + 0.02 * noise
    return np.stack([mono * (1 - 0.3 * c) for c in range(channels)], axis=1).astype(np.float32)


def write_tone(path: Path, seconds: float, freq: float, rate: int = SR, channels: int = 1, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(seconds, freq, rate, channels, seed), rate)
    return path


def overrides(source: Path, output: Path, *extra: str) -> list[str]:
    return [
        "data=folder",
        f"++data.source={source}",
        f"data.output={output}",
        "data.segment_seconds=1",
        "data.min_duration=0.3",
        "data.encode_batch_size=2",
        "data.shard_size=3",
        "data.progress=false",
        "model=tiny",
        *extra,
    ]


def data_config(args: list[str]):
    """The composed config, checked by the data section's own validator only."""
    from musicgen_train.data.config import validate as validate_data

    cfg = load_config(args, validate=False)
    validate_data(cfg)
    return cfg


@pytest.fixture(scope="module")
def encoder():
    """One tiny codec for the module (loading it is the slow part of a small prepare)."""
    return CodecEncoder.from_config(data_config(["model=tiny"]))


class CountingEncoder:
    """The real encoder, counting the segments it encodes; optionally interrupted."""

    def __init__(self, encoder, interrupt_after_batches: int | None = None):
        self.inner, self.segments, self.batches = encoder, 0, 0
        self.interrupt_after = interrupt_after_batches

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode(self, audio):
        if self.interrupt_after is not None and self.batches == self.interrupt_after:
            raise KeyboardInterrupt
        self.batches += 1
        self.segments += audio.shape[0]
        return self.inner.encode(audio)


def make_good_folder(root: Path, count: int = 3) -> list[Path]:
    files = []
    for i in range(count):
        files.append(write_tone(root / f"song{i}.wav", 2.2 + 0.5 * i, 200 + 50 * i, seed=i))
    return files


def comparable(entries: list[dict]) -> list[dict]:
    where = ("shard", "index", "file_stat")  # where the codes are, not what they are
    return [{k: v for k, v in e.items() if k not in where} for e in entries]


# --- segmentation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "segment", "hop", "ratio", "expected"),
    [
        (25, 10, None, 0.8, [(0, 10), (10, 10)]),  # 5 s tail < 8 s: dropped
        (28, 10, None, 0.8, [(0, 10), (10, 10), (20, 8)]),  # 8 s tail kept
        (20, 10, 5, 0.8, [(0, 10), (5, 10), (10, 10)]),  # overlap; 5 s tail dropped
        (3, 10, None, 0.8, [(0, 3)]),  # shorter than a window: one short segment
        (10, 10, None, 0.8, [(0, 10)]),
        (30, 10, None, 0.0, [(0, 10), (10, 10), (20, 10)]),
    ],
)
def test_segment_windows(seconds, segment, hop, ratio, expected):
    plan = SegmentPlan(segment, hop, ratio)
    rate = 100
    windows = plan.windows(seconds * rate, rate)
    assert windows == [(s * rate, n * rate) for s, n in expected]


def test_segment_count_matches_formula():
    plan = SegmentPlan(2.0, 0.5, 1.0)
    for n in range(200, 2000, 37):
        size, hop = 200, 50
        assert len(plan.windows(n, 100)) == (n - size) // hop + 1
    audio = np.arange(1000, dtype=np.float32)[None]
    segments = cut_segments(audio, 100, SegmentPlan(3.0, 2.0, 0.5))
    assert [(s.offset, s.duration) for s in segments] == [
        (0.0, 3.0),
        (2.0, 3.0),
        (4.0, 3.0),
        (6.0, 3.0),
        (8.0, 2.0),
    ]
    np.testing.assert_array_equal(segments[1].audio[0], np.arange(200, 500))


# --- validation --------------------------------------------------------------------------------


def make_bad_folder(root: Path) -> dict[str, str]:
    """Each kind of bad file; returns file name -> expected words of its reason."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "garbage.wav").write_bytes(
        bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8))
    )
    (root / "notes.wav").write_text("this is a text file, not a song\n" * 20)
    (root / "empty.wav").write_bytes(b"")
    write_tone(root / "short.wav", 0.2, 300)
    sf.write(root / "silent.wav", np.zeros(SR * 2, dtype=np.float32), SR)
    nan = tone(2.0, 300)
    nan[1000:1010] = np.nan
    sf.write(root / "nan.wav", nan, SR, subtype="FLOAT")
    inf = tone(2.0, 300)
    inf[5] = np.inf
    sf.write(root / "inf.wav", inf, SR, subtype="FLOAT")
    sf.write(root / "noframes.wav", np.zeros((0, 1), dtype=np.float32), SR)
    return {
        "garbage.wav": "cannot be decoded",
        "notes.wav": "not audio",
        "empty.wav": "empty file",
        "short.wav": "too short",
        "silent.wav": "silent",
        "nan.wav": "NaN/Inf",
        "inf.wav": "NaN/Inf",
        "noframes.wav": "no audio samples",
    }


def test_validate_reasons(tmp_path):
    expected = make_bad_folder(tmp_path)
    for name, words in expected.items():
        path = tmp_path / name
        item = AudioItem(key=name, source=str(path), path=path)
        result = validate(item, path.read_bytes(), min_duration=0.5, silence_db=-60)
        assert words in result.reason, (name, result.reason)
    good = write_tone(tmp_path / "good.wav", 1.0, 300)
    ok = validate(
        AudioItem("g", str(good), good), good.read_bytes(), min_duration=0.5, silence_db=-60
    )
    assert ok.sample_rate == SR and ok.audio.shape == (1, SR)


def test_prepare_folder_with_bad_files(tmp_path):
    source = tmp_path / "audio"
    expected = make_bad_folder(source)
    write_tone(source / "nested" / "good_a.wav", 2.5, 220, rate=44100, channels=2)
    sf.write(source / "good_b.flac", tone(1.5, 330, rate=16000), 16000)
    output = tmp_path / "cache"
    assert main(["prepare", *overrides(source, output)]) == 0
    report = json.loads((output / "prepare_report.json").read_text())
    reasons = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert set(reasons) == set(expected)
    for name, words in expected.items():
        assert words in reasons[name]
    assert report["files_ok"] == 2 and report["files_skipped"] == len(expected)
    # 2.5 s -> windows 0-1, 1-2 and a 0.5 s tail (< 0.8 * 1 s: dropped); 1.5 s -> 0-1 + tail.
    entries = TokenCache(output).manifest()
    assert [(Path(e["source"]).name, e["offset"], e["duration"]) for e in entries] == [
        ("good_b.flac", 0.0, 1.0),
        ("good_a.wav", 0.0, 1.0),
        ("good_a.wav", 1.0, 1.0),
    ]
    totals = report["totals"]
    assert totals["segments"] == 3
    assert totals["frames"] == 3 * 50 and totals["tokens"] == 3 * 50 * 4
    assert totals["hours"] == pytest.approx(4.0 / 3600, abs=1e-6)
    for e in entries:
        assert e["frames"] == math.ceil(e["duration"] * SR / 640)
        assert e["split"] in ("train", "valid")
    assert {e["split"] for e in entries} == {"train", "valid"}  # 2 files: one of each


def test_manifest_names_sources_by_absolute_path(tmp_path, monkeypatch):
    # A relative data.source (e.g. the demo under a relative work_dir) must still be found by
    # evaluation, which reads the manifest from wherever it runs.
    make_good_folder(tmp_path / "audio", count=2)
    monkeypatch.chdir(tmp_path)
    assert main(["prepare", *overrides(Path("audio"), Path("cache"))]) == 0
    sources = {e["source"] for e in TokenCache(tmp_path / "cache").manifest()}
    assert len(sources) == 2
    for source in sources:
        assert Path(source).is_absolute() and Path(source).is_file()


def test_zero_usable_files_is_an_error(tmp_path, capsys):
    source = tmp_path / "audio"
    make_bad_folder(source)
    output = tmp_path / "cache"
    assert main(["prepare", *overrides(source, output)]) == 2
    err = capsys.readouterr().err
    assert "musicgen-train: error: no usable audio" in err and "8 file(s) skipped" in err
    report = json.loads((output / "prepare_report.json").read_text())
    assert report["files_ok"] == 0 and len(report["skipped"]) == 8


# --- codes, split, incremental, refusal, resume ------------------------------------------------


def test_codes_equal_the_models_encodec(tmp_path, encoder, tiny_loaded):
    source = tmp_path / "audio"
    write_tone(source / "a.wav", 2.6, 250, rate=22050, channels=2)
    write_tone(source / "b.wav", 0.65, 400)  # one short segment, encoded alone
    cfg = data_config(overrides(source, tmp_path / "cache", "data.min_segment_ratio=0.5"))
    prepare(cfg, encoder=encoder)
    entries = TokenCache(cfg.data.output).manifest()
    assert [e["duration"] for e in entries] == [1.0, 1.0, 0.6, 0.65]
    assert [e["frames"] for e in entries] == [50, 50, 30, 33]  # 20800 samples / 640, rounded up
    info = json.loads((Path(cfg.data.output) / "cache_info.json").read_text())["codec"]
    assert info["model_id"] == "tiny" and info["codebook_size"] == 64
    assert info["num_codebooks"] == 4 and info["sample_rate"] == SR
    reader = ShardReader(cfg.data.output)
    from musicgen_train.audio import load_audio

    codec = tiny_loaded.model.audio_encoder
    for entry in entries:
        audio = load_audio(entry["source"], SR, 1)
        start = round(entry["offset"] * SR)
        piece = audio[:, start : start + round(entry["duration"] * SR)]
        with torch.no_grad():
            expected = codec.encode(torch.from_numpy(piece)[None], bandwidth=1.2).audio_codes[0, 0]
        cached = reader.codes(entry)
        assert cached.dtype == np.int16 and cached.shape == (4, entry["frames"])
        np.testing.assert_array_equal(cached, expected.numpy())


def test_split_by_file():
    keys = [f"song{i}.wav" for i in range(20)]
    splits = assign_splits(keys, seed=3, valid_fraction=0.2)
    assert sum(v == "valid" for v in splits.values()) == 4
    assert splits == assign_splits(list(reversed(keys)), seed=3, valid_fraction=0.2)
    assert splits != assign_splits(keys, seed=4, valid_fraction=0.2)
    assert list(assign_splits(keys[:2], 0, 0.01).values()).count("valid") == 1
    assert set(assign_splits(keys, 0, 0.0).values()) == {"train"}
    assert assign_splits(keys[:1], 0, 0.5) == {"song0.wav": "train"}
    # Stratified: every group gets its own share, so each is on both sides.
    groups = {k: ("jazz" if i % 2 else "rock") for i, k in enumerate(keys)}
    by_group = assign_splits(keys, 3, 0.2, groups)
    for group in ("jazz", "rock"):
        sides = [by_group[k] for k in keys if groups[k] == group]
        assert sides.count("valid") == max(1, round(0.2 * len(sides)))


def test_segments_of_one_song_stay_on_one_side(tmp_path, encoder):
    source = tmp_path / "audio"
    for i in range(6):
        write_tone(source / f"s{i}.wav", 2.0, 200 + 40 * i, seed=i)
    cfg = data_config(overrides(source, tmp_path / "cache", "data.valid_fraction=0.34"))
    report = prepare(cfg, encoder=encoder)
    sides: dict[str, set] = {}
    for entry in TokenCache(cfg.data.output).manifest():
        sides.setdefault(entry["key"], set()).add(entry["split"])
    assert all(len(s) == 1 for s in sides.values())
    assert report["splits"] == {
        "train": {"files": 4, "segments": 8},
        "valid": {"files": 2, "segments": 4},
    }


def test_incremental_rerun_encodes_only_changes(tmp_path, encoder, monkeypatch):
    source = tmp_path / "audio"
    files = make_good_folder(source)
    cfg = data_config(overrides(source, tmp_path / "cache"))
    first = CountingEncoder(encoder)
    prepare(cfg, encoder=first)
    assert first.segments == 2 + 2 + 3  # 2.2 s, 2.7 s, 3.2 s in 1 s windows
    before = {e["id"]: e for e in TokenCache(cfg.data.output).manifest()}

    again = CountingEncoder(encoder)
    report = prepare(cfg, encoder=again)
    assert again.segments == 0 and report["files_reused"] == 3
    assert {e["id"]: e for e in TokenCache(cfg.data.output).manifest()} == before

    # Unchanged size and mtime: not even read. A touched file is read, hashed and reused.
    import musicgen_train.data.prepare as prepare_module

    reads = []
    real_hash = prepare_module.hash_item
    monkeypatch.setattr(prepare_module, "hash_item", lambda item: reads.append(item) or
                        real_hash(item))  # fmt: skip
    os.utime(files[0], ns=(1, 1))
    report = prepare(cfg, encoder=again)
    assert [item.path for item in reads] == [files[0]] and again.segments == 0
    assert report["files_reused"] == 3

    write_tone(files[1], 2.7, 999, seed=7)  # changed content
    files[2].unlink()  # removed
    write_tone(source / "new.wav", 1.0, 500)  # added
    third = CountingEncoder(encoder)
    report = prepare(cfg, encoder=third)
    assert third.segments == 2 + 1
    assert report["files_encoded"] == 2 and report["files_reused"] == 1
    assert [Path(r["path"]).name for r in report["removed"]] == ["song2.wav"]
    assert "no longer in the source" in report["removed"][0]["reason"]
    after = TokenCache(cfg.data.output).manifest()
    assert {e["key"] for e in after} == {"song0.wav", "song1.wav", "new.wav"}
    kept = [e for e in after if e["key"] == "song0.wav"]
    assert comparable(kept) == comparable(
        [{**e, "split": kept[0]["split"]} for e in before.values() if e["key"] == "song0.wav"]
    )
    # Shards that only held removed or replaced segments are gone.
    shards = {p.name for p in (Path(cfg.data.output) / "shards").iterdir()}
    assert shards == {e["shard"] for e in after}


def test_cache_of_another_codec_is_refused(tmp_path, encoder):
    source = tmp_path / "audio"
    make_good_folder(source, count=1)
    output = tmp_path / "cache"
    prepare(data_config(overrides(source, output)), encoder=encoder)
    other = data_config(overrides(source, output, "model.tiny_seed=1"))
    with pytest.raises(UserError, match="another codec.*data.overwrite=true"):
        prepare(other)
    rebuild = data_config(overrides(source, output, "model.tiny_seed=1", "data.overwrite=true"))
    report = prepare(rebuild)
    assert report["files_encoded"] == 1
    # The same process ensuring the cache again (pipeline, then training) does not rebuild it.
    assert prepare(rebuild)["files_reused"] == 1
    info = json.loads((output / "cache_info.json").read_text())["codec"]
    assert info["weights_sha256"] != encoder.weights_hash()


def test_stereo_setting_must_fit_the_model(tmp_path):
    with pytest.raises(UserError, match="data.channels=2 does not fit tiny, a mono model"):
        CodecEncoder.from_config(data_config(["model=tiny", "data.channels=2"]))
    with pytest.raises(ConfigError, match="data.channels=3"):
        data_config(["data.channels=3"])


def test_interrupted_prepare_resumes_to_the_same_cache(tmp_path, encoder):
    source = tmp_path / "audio"
    make_good_folder(source, count=4)  # 2 + 2 + 3 + 3 = 10 segments
    straight = data_config(overrides(source, tmp_path / "straight"))
    prepare(straight, encoder=encoder)

    cfg = data_config(overrides(source, tmp_path / "resumed"))
    interrupted = CountingEncoder(encoder, interrupt_after_batches=3)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg, encoder=interrupted)
    cache = TokenCache(cfg.data.output)
    assert not cache.manifest_path.exists()  # only a finished prepare writes the manifest
    finished = cache.known_entries()
    assert len(finished) == interrupted.segments > 0  # every encoded batch was kept

    resumed = CountingEncoder(encoder)
    prepare(cfg, encoder=resumed)
    assert resumed.segments == 10 - len(finished)  # nothing finished is encoded twice
    assert not cache.journal_path.exists()
    a, b = TokenCache(straight.data.output).manifest(), cache.manifest()
    assert comparable(a) == comparable(b)
    ra, rb = ShardReader(straight.data.output), ShardReader(cfg.data.output)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(ra.codes(x), rb.codes(y))


def test_torn_journal_line_and_orphan_shard_are_ignored(tmp_path, encoder):
    source = tmp_path / "audio"
    make_good_folder(source, count=2)
    cfg = data_config(overrides(source, tmp_path / "cache"))
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg, encoder=CountingEncoder(encoder, interrupt_after_batches=1))
    cache = TokenCache(cfg.data.output)
    with open(cache.journal_path, "a") as handle:
        handle.write('{"id": "torn')  # a kill in the middle of a write
    (cache.shards_dir / "shard-000099.npy").write_bytes(b"half")  # renamed, never journaled
    report = prepare(cfg, encoder=encoder)
    assert report["totals"]["segments"] == 4
    assert not (cache.shards_dir / "shard-000099.npy").exists()


def test_items_from_memory(tmp_path, encoder):
    """HF datasets hand over bytes, not paths; metadata may carry numpy values."""
    from musicgen_train.audio import encode_audio_bytes

    data = encode_audio_bytes(tone(2.5, 300).T, SR)
    items = [
        AudioItem(
            key="row-0",
            source="hf:test[0]",
            data=data,
            metadata={"description": "a tone", "bpm": np.int64(90)},
        )
    ]
    cfg = data_config(overrides(tmp_path, tmp_path / "cache"))
    report = prepare_items(cfg, items, encoder=encoder)
    entry = TokenCache(cfg.data.output).manifest()[0]
    assert report["files_ok"] == 1 and entry["origin"] == "hf:test[0]"
    # The bytes are kept in the cache as a file, so evaluation can cut reference audio from it.
    kept = Path(entry["source"])
    assert kept.parent == Path(cfg.data.output) / "sources" and kept.suffix == ".wav"
    assert kept.read_bytes() == data
    again = prepare_items(cfg, items, encoder=encoder)  # reused: the same kept file
    assert again["files_reused"] == 1 and TokenCache(cfg.data.output).manifest()[0] == entry
    other = [AudioItem(key="row-1", source="hf:test[1]", data=encode_audio_bytes(
        tone(2.0, 500).T, SR, fmt="flac"))]  # fmt: skip
    prepare_items(cfg, other, encoder=encoder)
    assert not kept.exists()  # the row left the dataset: its kept file went with it
    assert Path(TokenCache(cfg.data.output).manifest()[0]["source"]).suffix == ".flac"
    assert entry["metadata"] == {"description": "a tone", "bpm": 90}
    assert "a tone" in entry["caption"] and "90 bpm" in entry["caption"]


@pytest.mark.slow
def test_demo_end_to_end_through_the_cli(tmp_path, work_home):
    """`musicgen-train prepare data.source=demo` on the shipped demo config, then the DataModule."""
    from musicgen_train.data.datamodule import TokenDataModule
    from musicgen_train.data.demo import CLIP_SECONDS, CLIPS_PER_STYLE, DEMO_STYLES
    from musicgen_train.data.prepare import ensure_token_cache

    output = tmp_path / "demo-cache"
    assert main(["prepare", "data=demo", f"data.output={output}", "data.progress=false"]) == 0
    report = json.loads((output / "prepare_report.json").read_text())
    clips = len(DEMO_STYLES) * CLIPS_PER_STYLE
    assert report["files_ok"] == clips and report["skipped"] == []
    assert report["totals"]["segments"] == clips  # 10 s clips in 10 s windows
    assert report["totals"]["hours"] == pytest.approx(clips * CLIP_SECONDS / 3600, abs=1e-5)
    # Split per style (data.stratify_by=genre): one held-out clip of every style.
    assert report["splits"]["valid"]["files"] == len(DEMO_STYLES)
    entries = TokenCache(output).manifest()
    valid_genres = sorted(e["metadata"]["genre"] for e in entries if e["split"] == "valid")
    assert valid_genres == sorted(s.genre for s in DEMO_STYLES)
    captions = {e["caption"] for e in entries}
    assert len(captions) > len(DEMO_STYLES)  # each clip says its own tempo and key
    assert all(any(s.genre in c for s in DEMO_STYLES) for c in captions)

    cfg = data_config(["data=demo", f"data.output={output}", "data.progress=false"])
    assert ensure_token_cache(cfg) == output  # nothing left to encode
    again = json.loads((output / "prepare_report.json").read_text())
    assert again["files_reused"] == clips and again["files_encoded"] == 0
    dm = TokenDataModule.from_config(cfg)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["codes"].shape == (4, 4, 250)  # batch 4, 5 s crops at 50 frames/s
    assert batch["codes"].max() < 64 and batch["padding_mask"].all()


def test_kill_sigterm_keeps_finished_batches(tmp_path, encoder):
    """`kill <pid>` (SIGTERM) stops prepare like Ctrl-C: encoded batches are written first."""
    import signal

    class KilledEncoder(CountingEncoder):
        def encode(self, audio):
            if self.batches == 2:  # killed while the third batch starts
                os.kill(os.getpid(), signal.SIGTERM)
            return super().encode(audio)

    source = tmp_path / "audio"
    make_good_folder(source, count=3)
    cfg = data_config(overrides(source, tmp_path / "cache", "data.shard_size=100"))
    killed = KilledEncoder(encoder)
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg, encoder=killed)
    assert signal.getsignal(signal.SIGTERM) == previous  # the handler is put back
    assert len(TokenCache(cfg.data.output).known_entries()) == killed.segments == 4
    resumed = CountingEncoder(encoder)
    prepare(cfg, encoder=resumed)
    assert resumed.segments == 7 - 4


def test_stereo_checkpoint_interleaves_left_and_right(tiny_model_dir):
    """Stereo MusicGen: the mono codec encodes each channel; codebooks alternate L, R, L, R."""
    from transformers import MusicgenForConditionalGeneration

    from musicgen_train.model.tiny import tiny_config

    config = tiny_config()
    config.decoder.audio_channels = 2
    config.decoder.num_codebooks = 8
    torch.manual_seed(0)
    model = MusicgenForConditionalGeneration(config).eval()
    stereo = CodecEncoder(model, "tiny-stereo", channels=2)
    assert (stereo.num_codebooks, stereo.channels, stereo.bandwidth) == (8, 2, 1.2)
    audio = tone(0.5, 300, channels=2).T[None]  # [1, 2, samples], right quieter
    codes = stereo.encode(audio)
    assert codes.shape == (1, 8, 25)
    with torch.no_grad():
        left, right = (
            model.audio_encoder.encode(torch.from_numpy(audio[:, c : c + 1]), bandwidth=1.2)
            .audio_codes[0]
            .numpy()
            for c in (0, 1)
        )
    np.testing.assert_array_equal(codes[:, 0::2], left)
    np.testing.assert_array_equal(codes[:, 1::2], right)
    with pytest.raises(UserError, match="data.channels=1 does not fit tiny-stereo"):
        CodecEncoder(model, "tiny-stereo", channels=1)


@pytest.mark.parametrize(
    ("override", "words"),
    [
        (
            "data.segment_seconds=0",
            "data.segment_seconds=0 is not allowed: it must be a number > 0",
        ),
        ("data.hop_seconds=-1", "data.hop_seconds=-1 is not allowed"),
        ("data.hop_seconds=40", "must be <= data.segment_seconds"),
        ("data.crop_seconds=0", "data.crop_seconds=0 is not allowed"),
        ("data.valid_fraction=1", "data.valid_fraction=1 is not allowed"),
        ("data.stratify_by=3", "data.stratify_by=3 is not allowed"),
        ("data.min_segment_ratio=1.5", "data.min_segment_ratio=1.5"),
        ("data.batch_size=0", "data.batch_size=0"),
        ("data.batch_size=2.5", "must be a whole number"),
        ("data.num_workers=-1", "data.num_workers=-1"),
        ("data.silence_db=6", "data.silence_db=6"),
        ("data.output=''", "data.output is empty"),
        ("data.encode_threads=0", "data.encode_threads=0"),
    ],
)
def test_bad_data_settings_fail_when_composed(override, words):
    with pytest.raises(ConfigError) as err:
        data_config(["data=folder", override])
    assert words in str(err.value)


def test_encode_threads_apply_while_encoding_only(tmp_path, encoder):
    class ThreadSpy(CountingEncoder):
        def encode(self, audio):
            self.threads = torch.get_num_threads()
            return super().encode(audio)

    write_tone(tmp_path / "audio" / "a.wav", 1.0, 300)
    cfg = data_config(overrides(tmp_path / "audio", tmp_path / "cache", "data.encode_threads=1"))
    before = torch.get_num_threads()
    spy = ThreadSpy(encoder)
    prepare(cfg, encoder=spy)
    assert spy.threads == 1 and torch.get_num_threads() == before
