"""kill -9 during `musicgen-train export` at seeded random points, then the recovery the docs
promise (docs/registry.md): the registry as it was, latest and aliases on complete versions, the
next export cleaning what the killed one left. Each export is a real process forked from a fork
server that imported the project once (tests/forked.py), so the kills land in the export's own
work, not in the imports of a fresh interpreter (which were 70 % of its time)."""

from __future__ import annotations

import random
import time
from pathlib import Path

import forked
import pytest

from musicgen_train.config import load_config
from musicgen_train.sources.registry_store import COMPLETE_TAG, Registry
from musicgen_train.sources.registry_uri import parse_registry_uri
from musicgen_train.training.train import train

NAME = "killed-export"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("runs") / "full"
    overrides = [
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "trainer.val_before_training=false",
        "trainer.enable_progress_bar=false",
        "logger=csv",
        "callbacks.samples.every_n_steps=0",
        f"run_dir={folder}",
    ]
    train(load_config(overrides))
    return folder


def export_command(run_dir: Path, registry_uri: str, exports: Path) -> list[str]:
    return [
        "export",
        "checkpoint=last",
        f"run_dir={run_dir}",
        f"registry.name={NAME}",
        "registry.alias=production",
        f"registry.uri={registry_uri}",
        f"export.output={exports / NAME}",
        "export.new_version=true",  # each kill test exports the same checkpoint again
    ]


def complete_versions(registry: Registry) -> list[int]:
    if not registry._exists(NAME):
        return []
    versions = registry.versions(NAME)
    return sorted(int(v.version) for v in versions if (v.tags or {}).get(COMPLETE_TAG))


@pytest.mark.slow
def test_kill_9_during_export_leaves_the_registry_usable(run_dir, tmp_path):
    registry_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exports = tmp_path / "exports"
    command = export_command(run_dir, registry_uri, exports)
    log = tmp_path / "exports.log"
    registry = Registry(registry_uri)
    assert complete_versions(registry) == []  # creates the tables, as a registry in use has

    # One complete export first: the state every later kill must leave usable. Its wall time
    # bounds where the kills land.
    forked.warm()
    started = time.monotonic()
    assert forked.run(forked.cli, command, log).returncode == 0, log.read_text()[-2000:]
    full = time.monotonic() - started
    assert complete_versions(registry) == [1]
    rng = random.Random(14)
    kills = 0
    for _ in range(3):
        child = forked.start(forked.cli, command, log)
        time.sleep(rng.uniform(0.1, 0.9) * full)
        kills += forked.kill(child)  # on a noisy host an export may end first
        complete = complete_versions(registry)
        # Whatever the kill interrupted: latest and the alias name complete versions.
        latest = registry.resolve(parse_registry_uri(f"models:/{NAME}/latest"))
        alias = registry.resolve(parse_registry_uri(f"models:/{NAME}@production"))
        assert int(latest.version) == max(complete)
        assert int(alias.version) in complete
        assert (exports / NAME / "config.json").is_file()  # the previous export folder
    assert kills >= 2, "the exports ended before the kills"

    # The next export succeeds and leaves nothing behind: no incomplete version, no staging.
    assert forked.run(forked.cli, command, log).returncode == 0, log.read_text()[-2000:]
    versions = registry.versions(NAME)
    assert all((v.tags or {}).get(COMPLETE_TAG) == "complete" for v in versions)
    assert [p.name for p in exports.iterdir()] == [NAME]
    newest = max(int(v.version) for v in versions)
    alias = registry.resolve(parse_registry_uri(f"models:/{NAME}@production"))
    assert int(alias.version) == newest
