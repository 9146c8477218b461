"""Checksums of model folders, atomic folder writes, and the loader refusing damaged models."""

import hashlib
import json
import os

import pytest

from musicgen_train.sources import load_musicgen
from musicgen_train.sources.checksums import (
    CHECKSUM_FILE,
    ChecksumError,
    verify_checksums,
    write_checksums,
)
from musicgen_train.sources.model_folder import atomic_folder, save_model_folder


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "model"
    (root / "sub").mkdir(parents=True)
    (root / "weights.bin").write_bytes(bytes(range(256)) * 40)
    (root / "config.json").write_text('{"a": 1}')
    (root / "sub" / "adapter.bin").write_bytes(b"lora" * 10)
    write_checksums(root)
    return root


def test_checksums_record_every_file_with_its_sha256_and_size(folder):
    record = json.loads((folder / CHECKSUM_FILE).read_text())
    assert record["algorithm"] == "sha256"
    assert sorted(record["files"]) == ["config.json", "sub/adapter.bin", "weights.bin"]
    data = bytes(range(256)) * 40
    assert record["files"]["weights.bin"] == {
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }
    verify_checksums(folder)  # an untouched folder passes


def test_altered_file_of_same_size_is_refused(folder):
    path = folder / "weights.bin"
    data = bytearray(path.read_bytes())
    data[1000] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=r"weights\.bin does not match its sha256"):
        verify_checksums(folder)


def test_truncated_missing_and_extra_files_are_refused(folder):
    path = folder / "weights.bin"
    original = path.read_bytes()
    path.write_bytes(original[:100])
    with pytest.raises(ChecksumError, match="has 100 bytes instead of 10240.*truncated"):
        verify_checksums(folder)
    path.unlink()
    with pytest.raises(ChecksumError, match="weights.bin is missing"):
        verify_checksums(folder)
    path.write_bytes(original)
    (folder / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(ChecksumError, match="not in checksums.json"):
        verify_checksums(folder)


def test_missing_or_corrupt_record_is_refused(folder):
    (folder / CHECKSUM_FILE).write_text("{not json")
    with pytest.raises(ChecksumError, match="corrupt"):
        verify_checksums(folder)
    (folder / CHECKSUM_FILE).unlink()
    with pytest.raises(ChecksumError, match="has no checksums.json"):
        verify_checksums(folder)


def test_atomic_folder_leaves_nothing_when_the_block_fails(tmp_path):
    dest = tmp_path / "out" / "model"
    with pytest.raises(RuntimeError), atomic_folder(dest) as work:
        (work / "half.bin").write_bytes(b"x")
        raise RuntimeError("crash half-way")
    assert not dest.exists()
    assert os.listdir(dest.parent) == []  # no staging folder left behind either


def test_atomic_folder_keeps_the_old_folder_until_the_new_one_is_complete(tmp_path):
    dest = tmp_path / "model"
    with atomic_folder(dest) as work:
        assert work.name == "model"  # the final name, for anything that copies it by name
        (work / "v").write_text("1")
    with pytest.raises(KeyboardInterrupt), atomic_folder(dest) as work:
        (work / "v").write_text("2")
        raise KeyboardInterrupt
    assert (dest / "v").read_text() == "1"
    with atomic_folder(dest) as work:
        (work / "v").write_text("3")
    assert (dest / "v").read_text() == "3"
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_loader_refuses_a_tampered_export(tmp_path, tiny_loaded):
    folder = tmp_path / "export"
    folder.mkdir()
    save_model_folder(folder, tiny_loaded.model, tiny_loaded.processor, readme="# tiny\n")
    assert {"model.safetensors", "config.json", CHECKSUM_FILE, "README.md"} <= set(
        os.listdir(folder)
    )
    load_musicgen(str(folder))  # intact: loads
    config = json.loads((folder / "config.json").read_text())
    config["decoder"]["num_hidden_layers"] = 1
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ChecksumError, match=r"config\.json .*altered"):
        load_musicgen(str(folder))
