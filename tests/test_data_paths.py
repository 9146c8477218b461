"""Unusual paths in a source: each is a report line with its reason (never dropped, never a
hang), and a file reached through several links is encoded once and lands in one split."""

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from musicgen_train.data.items import AudioItem, SkippedItem
from musicgen_train.data.paths import NotReadable, file_problem, open_regular
from musicgen_train.data.sources import iter_source

SR = 32000


def tone(path: Path, seconds: float, freq: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * SR)) / SR
    sf.write(path, 0.3 * np.sin(2 * np.pi * freq * t), SR)
    return path


def unusual_folder(root: Path) -> dict[str, str]:
    """A folder with two real songs and every kind of path that is not one; returns the
    expected words of each reason, by path relative to ``root``."""
    tone(root / "a.wav", 2.2, 300)
    tone(root / "albums" / "b.wav", 2.2, 500)
    os.symlink("a.wav", root / "link-to-a.wav")  # the same file twice
    os.link(root / "albums" / "b.wav", root / "hard-b.wav")  # a hard link: the same inode
    os.symlink("loop2.wav", root / "loop1.wav")
    os.symlink("loop1.wav", root / "loop2.wav")
    os.symlink("gone.wav", root / "dangling.wav")
    os.mkfifo(root / "pipe.wav")
    os.symlink("/dev/null", root / "device.wav")
    (root / "folder.wav").mkdir()
    os.symlink("..", root / "albums" / "up")  # a link back up the tree
    os.symlink("albums", root / "again")  # the same folder under another name
    return {
        "link-to-a.wav": "the same file as a.wav",
        "hard-b.wav": "the same file as albums/b.wav",
        "loop1.wav": "a symlink loop",
        "loop2.wav": "a symlink loop",
        "dangling.wav": "a dangling symlink: its target gone.wav does not exist",
        "pipe.wav": "a named pipe (FIFO)",
        "device.wav": "a character device",
        "folder.wav": "a folder, not an audio file",
        "albums/up": "a link to a folder already read",
        "again": "a link to a folder already read",
    }


def run_with_timeout(function, seconds: float = 60):
    """Run ``function`` in a thread: a FIFO opened for reading would block it forever."""
    result = {}

    def target():
        try:
            result["value"] = function()
        except BaseException as err:  # raised again in the test's thread
            result["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "hung (a FIFO was opened?)"
    if "error" in result:
        raise result["error"]
    return result["value"]


def test_every_unusual_path_is_reported_and_each_file_is_read_once(tmp_path):
    root = tmp_path / "music"
    expected = unusual_folder(root)
    items = run_with_timeout(lambda: list(iter_source({"source": str(root)}, tmp_path)))
    audio = [i for i in items if isinstance(i, AudioItem)]
    assert sorted(i.key for i in audio) == ["a.wav", "albums/b.wav"]
    reasons = {str(Path(s.source).relative_to(root)): s.reason for s in items
               if isinstance(s, SkippedItem)}  # fmt: skip
    assert set(reasons) == set(expected)
    for path, words in expected.items():
        assert words in reasons[path], (path, reasons[path])


def test_open_regular_never_blocks_and_names_the_kind(tmp_path):
    os.mkfifo(tmp_path / "p.wav")
    with pytest.raises(NotReadable, match="named pipe"):
        run_with_timeout(lambda: open_regular(tmp_path / "p.wav"))
    with pytest.raises(NotReadable, match="a folder"):
        open_regular(tmp_path)
    with pytest.raises(NotReadable, match="dangling symlink"):
        os.symlink("nothing", tmp_path / "d.wav")
        open_regular(tmp_path / "d.wav")
    tone(tmp_path / "ok.wav", 0.1, 100)
    with open_regular(tmp_path / "ok.wav") as handle:
        assert handle.read(4) == b"RIFF"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file_and_folder_are_reported(tmp_path):
    root = tmp_path / "music"
    tone(root / "ok.wav", 1.0, 300)
    tone(root / "locked.wav", 1.0, 300).chmod(0)
    (root / "closed").mkdir()
    tone(root / "closed" / "x.wav", 1.0, 300)
    (root / "closed").chmod(0)
    try:
        items = list(iter_source({"source": str(root)}, tmp_path))
    finally:
        (root / "closed").chmod(0o755)
    reasons = {Path(i.source).name: i.reason for i in items if isinstance(i, SkippedItem)}
    assert reasons == {"locked.wav": "cannot be read: permission denied",
                       "closed": "the folder cannot be listed: Permission denied"}  # fmt: skip
    assert file_problem(root / "locked.wav") == "cannot be read: permission denied"


def test_manifest_lines_naming_unusual_paths_or_one_file_twice(tmp_path):
    tone(tmp_path / "a.wav", 1.0, 300)
    os.symlink("a.wav", tmp_path / "alias.wav")
    os.mkfifo(tmp_path / "pipe.wav")
    os.symlink("gone.wav", tmp_path / "dangling.wav")
    lines = ["a.wav", "alias.wav", "pipe.wav", "dangling.wav", "a.wav"]
    manifest = tmp_path / "data.jsonl"
    manifest.write_text("".join(json.dumps({"path": p}) + "\n" for p in lines))
    items = run_with_timeout(lambda: list(iter_source({"source": str(manifest)}, tmp_path)))
    assert [type(i).__name__ for i in items] == ["AudioItem"] + ["SkippedItem"] * 4
    reasons = [i.reason for i in items[1:]]
    assert reasons[0] == "path 'alias.wav' is the same file as line 1: read once"
    assert "named pipe" in reasons[1] and "dangling symlink" in reasons[2]
    assert reasons[3] == "path 'a.wav' is the same file as line 1: read once"


def test_prepare_encodes_a_linked_file_once_in_one_split(tmp_path):
    from musicgen_train.config import load_config
    from musicgen_train.data.cache import TokenCache
    from musicgen_train.data.prepare import prepare

    root = tmp_path / "music"
    expected = unusual_folder(root)
    for i in range(4):
        tone(root / f"more{i}.wav", 1.5, 200 + 60 * i)
    cfg = load_config([
        "data=folder", f"++data.source={root}", f"data.output={tmp_path / 'cache'}",
        "data.segment_seconds=1", "data.min_duration=0.3", "data.progress=false",
        "data.valid_fraction=0.5", "model=tiny",
    ])  # fmt: skip
    report = run_with_timeout(lambda: prepare(cfg), 600)
    entries = TokenCache(cfg.data.output).manifest()
    sources = {e["source"] for e in entries}
    assert len(sources) == 6 == report["files_ok"]  # a, b and more0-3: once each
    assert sorted(Path(s["path"]).relative_to(root).as_posix() for s in report["skipped"]) == \
        sorted(expected)  # fmt: skip
    real = {os.path.realpath(s) for s in sources}
    assert len(real) == len(sources)  # no file under two names
    for source in sources:
        assert len({e["split"] for e in entries if e["source"] == source}) == 1
