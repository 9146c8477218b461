"""`registry delete`: one version or one alias, named explicitly; never a version an alias
still names (a service loading models:/NAME@ALIAS would find nothing)."""

from __future__ import annotations

import pytest

from musicgen_train.cli import main
from musicgen_train.registry.pyfunc import pyfunc_flavor
from musicgen_train.sources.checkpoint import DEFAULT_GENERATION
from musicgen_train.sources.model_folder import atomic_folder, save_model_folder
from musicgen_train.sources.registry_store import Registry


@pytest.fixture
def registry(tmp_path, tiny_loaded) -> Registry:
    folder = tmp_path / "tiny-export"
    with atomic_folder(folder) as work:
        save_model_folder(work, tiny_loaded.model, tiny_loaded.processor, readme="# tiny\n")
    registry = Registry(f"sqlite:///{tmp_path / 'mlflow.db'}")
    flavor = pyfunc_flavor(DEFAULT_GENERATION)
    for alias in ("production", None):
        registry.register(folder, "m", alias=alias, **flavor, requirements=["musicgen-train"])
    return registry


def _run(registry, capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["registry", "delete", f"registry.uri={registry.uri}", *args])
    captured = capsys.readouterr()
    return code, (captured.out + captured.err).strip()


def test_delete_versions_and_aliases_by_name(registry, capsys):
    code, said = _run(registry, capsys, "registry.name=m", "registry.version=1")
    assert code == 2 and "version 1 of 'm' is named by alias production" in said
    assert "registry delete registry.name=m registry.alias=production" in said
    assert _run(registry, capsys, "registry.name=m", "registry.version=9")[1].endswith(
        "has no version 9 (versions: [1, 2])"
    )
    assert (
        "has no alias 'prod'" in _run(registry, capsys, "registry.name=m", "registry.alias=prod")[1]
    )
    assert (
        "no registered model 'n'"
        in _run(registry, capsys, "registry.name=n", "registry.version=1")[1]
    )
    code, said = _run(registry, capsys, "registry.name=m")
    assert code == 2 and "delete needs registry.name=NAME and one of registry.version=N" in said

    assert _run(registry, capsys, "registry.name=m", "registry.alias=production") == (
        0,
        "deleted alias models:/m@production (was version 1)",
    )
    assert _run(registry, capsys, "registry.name=m", "registry.version=1") == (
        0,
        "deleted models:/m/1",
    )
    assert [int(v.version) for v in registry.versions("m")] == [2]
    assert registry.model("m").aliases == {}
