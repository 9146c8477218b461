"""A registry that is there but cannot be used (locked by another process, not a database) is
one line naming it and what to do, from every command, never a page of SQLAlchemy traceback."""

from __future__ import annotations

import sqlite3

import pytest

from musicgen_train.cli import main
from musicgen_train.sources import load_musicgen
from musicgen_train.sources.registry_store import Registry, RegistryError


@pytest.fixture
def registry_db(tmp_path):
    db = tmp_path / "registry" / "mlflow.db"
    Registry(f"sqlite:///{db}").models()  # created and migrated
    return db


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_a_locked_registry_is_one_line(registry_db, tmp_path, capsys):
    uri = f"sqlite:///{registry_db}"
    holder = sqlite3.connect(registry_db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process in the middle of a long write
    try:
        # The call waits out MLflow's SQLite busy timeout (20 s) first: one call here; loading a
        # model goes through the same error translation (the damaged-file test below).
        capsys.readouterr()
        out = tmp_path / "never"
        export = ["export", f"registry.uri={uri}", "checkpoint=last", f"export.output={out}"]
        assert main(export) == 2
        err = _error(capsys)
        assert err.startswith(f"musicgen-train: error: the MLflow registry at {uri} cannot be used")
        assert "database is locked; another process holds it" in err
        assert not out.exists()
    finally:
        holder.rollback()
        holder.close()
    assert main(["registry", "list", f"registry.uri={uri}"]) == 0  # usable again once free


def test_a_file_that_is_not_a_registry_is_one_line(tmp_path, capsys):
    bad = tmp_path / "mlflow.db"
    bad.write_text("these are my notes, not a database\n" * 200)
    uri = f"sqlite:///{bad}"
    capsys.readouterr()
    assert main(["registry", "show", f"registry.uri={uri}", "registry.name=x"]) == 2
    err = _error(capsys)
    assert f"the MLflow registry at {uri} cannot be used" in err
    assert "file is not a database" in err
    with pytest.raises(RegistryError, match="file is not a database"):
        load_musicgen("models:/anything/1", registry_uri=uri)
    assert bad.read_text().startswith("these are my notes")  # left as it was


def test_a_registry_below_a_file_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("not a folder")
    uri = f"sqlite:///{blocker / 'mlflow.db'}"
    capsys.readouterr()
    assert main(["registry", "list", f"registry.uri={uri}"]) == 2
    err = _error(capsys)
    assert err.startswith(f"musicgen-train: error: the MLflow registry at {uri} failed (opening")
    assert str(blocker) in err
    assert blocker.read_text() == "not a folder"
