"""Registered model names: what export derives by itself is a name every command accepts, and
a name too long for a folder is refused when the config is composed, not by a traceback."""

from __future__ import annotations

import pytest

from musicgen_train.cli import main
from musicgen_train.config import load_config
from musicgen_train.errors import ConfigError
from musicgen_train.registry.commands import registered_name
from musicgen_train.registry.config import NAME


@pytest.mark.parametrize(
    ("run_name", "expected"),
    [
        ("demo", "musicgen-demo"),
        ("my jazz run", "musicgen-my-jazz-run"),
        ("jäzz!", "musicgen-j-zz"),
    ],
)
def test_the_default_name_is_a_valid_registry_name(run_name, expected):
    cfg = load_config([f"run_name={run_name}"])
    name = registered_name(cfg)
    assert name == expected
    assert NAME.match(name)
    # the name export registered is one that registry show / promote / download accept
    load_config([f"registry.name={name}"])


def test_a_long_run_name_gives_a_name_that_fits_a_folder():
    name = registered_name(load_config([f"run_name={'a' * 300}"]))
    assert len(name) == 200 and NAME.match(name)


def test_a_name_too_long_for_a_folder_is_refused_in_one_line(tmp_path, capsys):
    long = "a" * 201
    with pytest.raises(ConfigError, match=r"registry.name='a+' is not allowed.*at most 200"):
        load_config([f"registry.name={long}"])
    load_config([f"registry.name={'a' * 200}"])
    capsys.readouterr()
    assert main(["export", f"registry.name={long}", f"work_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "registry.name=" in err and "at most 200" in err and "\n" not in err
    assert not any(tmp_path.iterdir())  # nothing written
