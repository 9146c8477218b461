"""Without network and without HF_HUB_OFFLINE, hub ids load from the cache at once or fail in one
line, instead of retrying every file for most of a minute."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from musicgen_train.model.hub_access import hub_kwargs, hub_reachable


@pytest.fixture
def online_mode(monkeypatch):
    """HF_HUB_OFFLINE unset, as on a user's machine; the reachability answer is not kept."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    hub_reachable.cache_clear()
    yield monkeypatch
    hub_reachable.cache_clear()


# The ".invalid" top-level domain never resolves (RFC 2606): a machine without network.
UNREACHABLE = "https://hub.invalid"


def test_reachability_is_one_connection_to_the_endpoint(online_mode):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        online_mode.setenv("HF_ENDPOINT", f"http://127.0.0.1:{listener.getsockname()[1]}")
        assert hub_reachable() is True
        assert hub_kwargs("org/some-model") == {}  # a reachable hub: normal loading
    hub_reachable.cache_clear()
    online_mode.setenv("HF_ENDPOINT", UNREACHABLE)
    assert hub_reachable() is False
    assert hub_kwargs("org/some-model") == {"local_files_only": True}


def test_local_folders_never_ask_the_hub(tmp_path, online_mode):
    online_mode.setenv("HF_ENDPOINT", UNREACHABLE)
    assert hub_kwargs(str(tmp_path)) == {}
    assert hub_reachable.cache_info().currsize == 0  # not even asked


def test_unreachable_hub_fails_in_one_line_without_retrying(tmp_path):
    """A user's machine without network: HF_HUB_OFFLINE unset (huggingface_hub reads it at
    import, hence a fresh process), the hub's name does not resolve."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
    env.update(HF_ENDPOINT=UNREACHABLE, HF_HOME=str(tmp_path / "hf"))
    command = [sys.executable, "-m", "musicgen_train.cli", "evaluate", "model=org/not-cached"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert errors == [
        "musicgen-train: error: checkpoint 'org/not-cached' is not available (it is not in the "
        "Hugging Face cache and the hub could not be reached): download it once on a machine "
        "with network (`hf download org/not-cached`), copy the cache (~/.cache/huggingface), or "
        "point model.id at a local folder saved with save_pretrained"
    ]
    # huggingface_hub's back-off (1 + 2 + 4 + 8 + 8 s per file) never started.
    assert "Retrying" not in done.stderr, done.stderr[-2000:]


def test_clap_checkpoint_missing_offline_is_one_reason(online_mode):
    from omegaconf import OmegaConf

    from musicgen_train.evaluation.clap import ClapEmbedder
    from musicgen_train.evaluation.embedders import EmbedderUnavailable

    online_mode.setenv("HF_ENDPOINT", UNREACHABLE)
    with pytest.raises(EmbedderUnavailable) as info:
        ClapEmbedder.from_config(OmegaConf.create({"checkpoint": "laion/larger_clap_music"}))
    assert "not in the Hugging Face cache, and the hub cannot be reached" in str(info.value)


def test_hub_dataset_missing_offline_is_one_line(online_mode):
    from musicgen_train.data.sources import load_hf_dataset
    from musicgen_train.errors import UserError

    online_mode.setenv("HF_ENDPOINT", UNREACHABLE)
    with pytest.raises(UserError) as info:
        load_hf_dataset({}, "org/not-cached-dataset")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(
        "data.source='org/not-cached-dataset' is not a local folder or file, nor a Hugging Face "
        "dataset in the cache (the hub cannot be reached): load it once"
    )
