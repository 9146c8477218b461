"""What a new user hit on their own data (issue 12): each case failed on the code before it."""

from __future__ import annotations

import socket

import pytest

from musicgen_train.cli import main
from musicgen_train.config import load_config, quote_if_needed
from musicgen_train.errors import ConfigError
from musicgen_train.registry.commands import registered_name

PRINTED_CHECKPOINT = "/tmp/runs/demo/checkpoints/best-step=25-val_ce=3.7799.ckpt"


@pytest.mark.parametrize("key", ["checkpoint", "ckpt_path", "data.source", "data.output"])
def test_a_printed_path_is_accepted_back_unquoted(key):
    cfg = load_config([f"{key}={PRINTED_CHECKPOINT}"], validate=False)
    assert str(cfg[key] if "." not in key else cfg.data[key.split(".")[1]]) == PRINTED_CHECKPOINT


def test_a_printed_checkpoint_is_a_model_source():
    cfg = load_config([f"model={PRINTED_CHECKPOINT}"], validate=False)
    assert cfg.model.id == PRINTED_CHECKPOINT


def test_quoting_keeps_what_hydra_reads_and_escapes_quotes():
    assert quote_if_needed("optim.lr=1e-4") == "optim.lr=1e-4"
    assert quote_if_needed("trainer.devices=[0,1]") == "trainer.devices=[0,1]"
    cfg = load_config(["data.source=/music/it's=here"], validate=False)
    assert cfg.data.source == "/music/it's=here"
    # Hydra reads a comma as a sweep, which a single run could only refuse as "ambiguous".
    for folder in ("/music/Rock, Pop", "/music/a,b (live)", "/music/glob(x)"):
        assert load_config([f"data.source={folder}"], validate=False).data.source == folder


def test_max_steps_minus_one_needs_an_epoch_limit():
    with pytest.raises(ConfigError) as caught:
        load_config(["trainer.max_steps=-1"])
    assert "trainer.max_steps=-1" in str(caught.value) and "max_epochs" in str(caught.value)
    cfg = load_config(["trainer.max_steps=-1", "trainer.max_epochs=3"])
    assert cfg.trainer.max_epochs == 3


@pytest.mark.parametrize("value", ["0", "-5", "2.5", "true"])
def test_bad_step_counts_name_key_and_value(value):
    with pytest.raises(ConfigError, match=f"(?i)trainer.max_steps={value}"):
        load_config([f"trainer.max_steps={value}"])


def test_runs_are_named_after_recipe_and_data(tmp_path):
    demo = load_config([f"work_dir={tmp_path}"])
    own = load_config(
        [f"work_dir={tmp_path}", "data=folder", f"data.source={tmp_path}", "data.name=my songs"]
    )
    assert demo.run_dir == f"{tmp_path}/runs/demo"
    assert own.run_dir == f"{tmp_path}/runs/demo-my-songs"
    assert registered_name(demo) == "musicgen-demo"
    assert registered_name(own) == "musicgen-demo-my-songs"
    assert load_config(["recipe=jazz"]).run_name == "jazz"


def test_serve_says_in_one_line_that_the_port_is_taken(capsys):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        code = main(["serve", "model=tiny", "host=127.0.0.1", f"port={port}"])
    finally:
        taken.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and f"127.0.0.1:{port} is already in use" in err[0]
