"""Fault injection for prepare: kill -9 at seeded random points, then the recovery docs/data.md
promises (a re-run reuses every committed batch and ends with the same cache, byte for byte).
The killed processes are forked from a fork server that imported the project once
(tests/forked.py); what they run and where they die: tests/prepare_killer.py."""

import json
import os
import random
import signal
import time
from pathlib import Path

import forked
import numpy as np
import pytest
import soundfile as sf
from prepare_killer import prepare_and_die

from musicgen_train.data.cache import TokenCache
from musicgen_train.data.prepare import prepare

SR = 32000
FILES = (3.2, 4.6, 2.3, 5.1, 3.9)  # seconds: 3 + 4 + 2 + 5 + 4 segments (a 0.9 s tail)
SEGMENTS = 18


def make_source(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i, seconds in enumerate(FILES):
        t = np.arange(int(seconds * SR)) / SR
        noise = 0.02 * np.random.default_rng(i).standard_normal(t.size)
        sf.write(root / f"song{i}.wav", (0.3 * np.sin(2 * np.pi * (150 + 40 * i) * t) + noise), SR)
    return root


def args(source: Path, output: Path, *extra: str) -> list[str]:
    return [
        "data=folder", f"++data.source={source}", f"data.output={output}",
        "data.segment_seconds=1", "data.min_duration=0.3", "data.encode_batch_size=2",
        "data.progress=false", "model=tiny", *extra,
    ]  # fmt: skip


def run_child(tmp_path: Path, point: str, n: int, argv: list[str]) -> forked.Finished:
    """A real prepare process that kills itself at ``point`` (tests/prepare_killer.py)."""
    return forked.run(prepare_and_die, (point, n, argv), tmp_path / "child.log")


def config(argv: list[str]):
    from musicgen_train.config import load_config

    return load_config(argv)


def cache_files(root: Path) -> dict[str, bytes]:
    """Everything a finished prepare leaves for training: manifest and shards, as bytes."""
    files = {"manifest.jsonl": (root / "manifest.jsonl").read_bytes()}
    for path in sorted((root / "shards").iterdir()):
        files[f"shards/{path.name}"] = path.read_bytes()
    return files


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The source and the cache of an uninterrupted prepare (the default shard_size=256)."""
    tmp = tmp_path_factory.mktemp("straight")
    source = make_source(tmp / "audio")
    report = prepare(config(args(source, tmp / "cache")))
    assert report["totals"]["segments"] == SEGMENTS and report["files_encoded"] == len(FILES)
    return source, cache_files(tmp / "cache")


@pytest.fixture(scope="module")
def straight_4(tmp_path_factory, straight):
    """The cache of an uninterrupted prepare of the same source with data.shard_size=4."""
    source, _ = straight
    output = tmp_path_factory.mktemp("straight4") / "cache"
    prepare(config(args(source, output, "data.shard_size=4")))
    return cache_files(output)


def committed(output: Path) -> int:
    """Segments a killed run left committed (journaled with their codes on disk)."""
    return len(TokenCache(output).known_entries())


@pytest.mark.slow
def test_kill9_at_the_default_shard_size_keeps_every_committed_batch(tmp_path, straight):
    """Today's complaint: kill -9 with shard_size=256 kept 0 segments. Now it keeps every batch
    the codec finished: the 5th codec call dies, so 4 batches of 2 are on disk and reused."""
    source, expected = straight
    output = tmp_path / "cache"
    child = run_child(tmp_path, "encode", 5, args(source, output))
    assert child.returncode == -signal.SIGKILL, child.output[-2000:]
    assert committed(output) == 8
    report = prepare(config(args(source, output)))
    assert report["segments_reused"] == 8 and report["segments_encoded"] == SEGMENTS - 8
    assert cache_files(output) == expected


POINTS = ("encode", "before-journal", "torn-journal", "pack", "manifest")


@pytest.mark.slow
@pytest.mark.parametrize("first", POINTS)
def test_kill9_at_seeded_random_points_resumes_to_the_same_cache(
    tmp_path, straight, straight_4, first
):
    """Two kills in a row (the first at each kind of point, the second anywhere; where, drawn
    from a seeded generator), then a full run: the cache equals the uninterrupted run's, and the
    last run reused exactly the segments the killed ones committed."""
    source, expected = straight
    output = tmp_path / "cache"
    rng = random.Random(POINTS.index(first))
    batches = 10  # 17 full windows in batches of 2, the last one alone, and the tail
    for kill in range(2):
        point = first if kill == 0 else rng.choice(POINTS)
        n = rng.randint(1, 3) if point == "pack" else rng.randint(1, batches)
        before = committed(output)
        child = run_child(tmp_path, point, n, args(source, output, "data.shard_size=4"))
        if child.returncode == 0:  # fewer batches were left than n: it finished
            assert committed(output) == SEGMENTS
            continue
        assert child.returncode == -signal.SIGKILL, (point, n, child.output[-2000:])
        after = committed(output)
        if point in ("pack", "manifest") or before == SEGMENTS:
            assert after == SEGMENTS, (point, n)  # everything was encoded before packing
        else:
            # The n-th batch of this run died; the n-1 before it were committed.
            assert after >= before and after <= SEGMENTS, (point, n)
    kept = committed(output)
    report = prepare(config(args(source, output, "data.shard_size=4")))
    assert report["segments_reused"] == kept, (first, kept)
    assert report["segments_encoded"] == SEGMENTS - kept
    assert not TokenCache(output).journal_path.exists()
    assert not TokenCache(output).parts_dir.exists() or not any(
        TokenCache(output).parts_dir.iterdir()
    )
    assert cache_files(output) == straight_4
    manifest = [json.loads(line) for line in expected["manifest.jsonl"].decode().splitlines()]
    assert len(manifest) == SEGMENTS


@pytest.mark.slow
def test_kill9_from_outside_while_encoding(tmp_path, straight):
    """A plain `kill -9 <pid>` from another process, once a seeded number of batches is
    journaled: the re-run reuses what the journal held and ends with the uninterrupted cache."""
    source, expected = straight
    output = tmp_path / "cache"
    journal = output / "journal.jsonl"
    target = random.Random(7).randint(2, 12)  # journal lines (segments) to wait for
    argv = args(source, output, "data.encode_threads=1")
    child = forked.start(prepare_and_die, ("none", 0, argv), tmp_path / "child.log")
    try:
        while child.is_alive():
            if journal.exists() and journal.read_text().count("\n") >= target:
                os.kill(child.pid, signal.SIGKILL)
                break
            time.sleep(0.002)
    finally:
        child.join(timeout=600)
    assert child.exitcode == -signal.SIGKILL, "the child ended before it was killed"
    kept = committed(output)
    report = prepare(config(args(source, output)))
    assert report["segments_reused"] == kept and report["segments_encoded"] == SEGMENTS - kept
    assert cache_files(output) == expected
