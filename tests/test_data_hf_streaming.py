"""data.hf.streaming: a Hugging Face dataset read row by row, never downloaded whole."""

import logging
from pathlib import Path

import numpy as np
import pytest

from musicgen_train.audio import encode_audio_bytes
from musicgen_train.config import load_config
from musicgen_train.data.cache import ShardReader, TokenCache
from musicgen_train.data.encode import CodecEncoder
from musicgen_train.data.items import AudioItem, SkippedItem
from musicgen_train.data.prepare import prepare
from musicgen_train.data.sources import iter_source, load_hf_dataset
from musicgen_train.errors import ConfigError, UserError

SR = 32000


def tone_bytes(seconds: float, freq: float) -> bytes:
    t = np.arange(int(seconds * SR)) / SR
    return encode_audio_bytes((0.3 * np.sin(2 * np.pi * freq * t))[None].astype(np.float32), SR)


@pytest.fixture
def repo(tmp_path) -> Path:
    """A dataset repository as downloaded from the hub: parquet under data/, an Audio column
    not called "audio", captions and a genre."""
    import datasets

    rows = {
        "song": [
            {"bytes": tone_bytes(1.2 + 0.3 * i, 200 + 60 * i), "path": f"{i}.wav"} for i in range(4)
        ],  # fmt: skip
        "caption": ["slow drone", "bright lead", "deep bass", "soft pad"],
        "genre": ["ambient", "synthwave", "dub", "ambient"],
    }
    folder = tmp_path / "repo" / "data"
    folder.mkdir(parents=True)
    table = datasets.Dataset.from_dict(rows).cast_column("song", datasets.Audio())
    table.to_parquet(str(folder / "train-00000-of-00001.parquet"))
    return folder.parent


def config(source: Path, output: Path, streaming):
    from musicgen_train.data.config import validate

    cfg = load_config(
        ["data=hf", f"++data.source={source}", f"data.output={output}",
         f"data.hf.streaming={str(streaming).lower()}", "data.segment_seconds=1",
         "data.min_duration=0.3", "data.valid_fraction=0.25", "data.encode_batch_size=2",
         "data.progress=false",
         "model=tiny"],
        validate=False,
    )  # fmt: skip
    validate(cfg)
    return cfg


class InterruptedEncoder:
    """The real encoder, as if Ctrl-C came after its first batch."""

    def __init__(self, encoder):
        self.inner, self.batches = encoder, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode(self, audio):
        if self.batches == 1:
            raise KeyboardInterrupt
        self.batches += 1
        return self.inner.encode(audio)


def cache_contents(output: Path) -> list[dict]:
    """Each segment's identity, caption, split and codes (not where in the shards they are)."""
    reader = ShardReader(output)
    out = []
    for entry in TokenCache(output).manifest():
        kept = {k: v for k, v in entry.items() if k not in ("shard", "index", "file_stat")}
        kept["source"] = Path(kept["source"]).name  # the kept bytes, under each cache
        out.append({**kept, "codes": reader.codes(entry).tolist()})
    return out


def test_streamed_prepare_resumes_and_gives_the_same_cache(repo, tmp_path, caplog):
    import datasets

    dataset, _ = load_hf_dataset({"streaming": True}, repo)
    assert isinstance(dataset, datasets.IterableDataset)  # rows read as they are iterated
    encoder = CodecEncoder.from_config(load_config(["model=tiny"], validate=False))
    streamed = config(repo, tmp_path / "streamed", streaming=True)
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C after the first batch of codes
        prepare(streamed, encoder=InterruptedEncoder(encoder))
    with caplog.at_level(logging.INFO, logger="musicgen_train.data.hf"):
        resumed = prepare(streamed, encoder=encoder)
    assert "reading its Audio column 'song'" in caplog.text
    assert resumed["files_ok"] == 4 and resumed["files_skipped"] == 0
    assert 0 < resumed["segments_reused"] < resumed["totals"]["segments"]  # the stream resumed

    whole = prepare(config(repo, tmp_path / "whole", streaming=False), encoder=encoder)
    for key in ("splits", "captions", "totals", "skipped"):
        assert resumed[key] == whole[key], key
    assert resumed["splits"]["valid"]["files"] == 1  # valid_fraction without a known length
    assert cache_contents(tmp_path / "streamed") == cache_contents(tmp_path / "whole")


def test_a_stream_without_features_is_read_from_its_first_row(monkeypatch, caplog):
    # Streamed datasets built by generators or scripts do not know their features: columns were
    # looked up on None (a TypeError from inside prepare).
    import datasets

    import musicgen_train.data.hf as hf

    def rows():
        yield {"wav": {"bytes": tone_bytes(0.5, 300), "path": None}, "tags": "lofi", "n": 1}
        yield {"tags": "a row without its audio", "n": 2}

    stream = datasets.IterableDataset.from_generator(rows)
    assert stream.features is None
    monkeypatch.setattr(hf, "hub_kwargs", lambda source: {})  # as with network
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **kw: stream)
    data_cfg = {"source": "org/stream", "hf": {"streaming": True}}
    with caplog.at_level(logging.INFO, logger="musicgen_train.data.hf"):
        items = list(iter_source(data_cfg, "."))
    assert "reading its Audio column 'wav'" in caplog.text
    assert "Its text columns are ['tags']" in caplog.text
    first, second = items
    assert isinstance(first, AudioItem) and first.key == "train/000000"
    assert first.metadata == {"tags": "lofi", "n": 1} and first.data[:4] == b"RIFF"
    assert isinstance(second, SkippedItem) and "no audio bytes" in second.reason

    def broken():  # the connection drops after the first row
        yield {"wav": {"bytes": tone_bytes(0.5, 300), "path": None}}
        raise ConnectionError("Server disconnected\nmore detail")

    stream = datasets.IterableDataset.from_generator(broken)
    items = iter_source(data_cfg, ".")
    assert isinstance(next(items), AudioItem)
    with pytest.raises(UserError) as info:
        next(items)
    assert str(info.value) == (
        "reading data.source='org/stream' failed at row 1 (ConnectionError: Server "
        "disconnected): the rows before it are encoded and kept; re-run prepare to resume"
    )


def test_streaming_offline_and_bad_values_are_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as info:
        load_hf_dataset({"streaming": True}, "org/not-cached-dataset")
    assert str(info.value).startswith(
        "data.hf.streaming=true reads data.source='org/not-cached-dataset' from the hub, but "
        "HF_HUB_OFFLINE=1 is set: set data.hf.streaming=false"
    )
    with pytest.raises(ConfigError, match=r"data.hf.streaming='yes' is not allowed: give true"):
        config(Path("x"), Path("y"), streaming="yes")
