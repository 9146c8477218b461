"""A real MLflow tracking server (``mlflow server`` on loopback, SQLite backend, artifacts served
by the server): a version registered there loads back by alias through ``models:/``, and the
registry's errors read the same as a local store's."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch
from safetensors.torch import load_file

from musicgen_train.cli import main
from musicgen_train.registry.pyfunc import pyfunc_flavor
from musicgen_train.sources import load_musicgen
from musicgen_train.sources.checkpoint import DEFAULT_GENERATION
from musicgen_train.sources.model_folder import atomic_folder, save_model_folder
from musicgen_train.sources.registry_store import Registry

pytest.importorskip("flask", reason="`mlflow server` needs the full mlflow package")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    command = [
        *([shutil.which("mlflow")] if shutil.which("mlflow") else [sys.executable, "-m", "mlflow"]),
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    log = open(root / "server.log", "w")  # noqa: SIM115 - closed at teardown
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}"
                )
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the server and its worker processes
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def test_a_version_on_a_tracking_server_loads_back_by_alias(server, tmp_path, tiny_loaded, capsys):
    folder = tmp_path / "tiny-export"
    with atomic_folder(folder) as work:
        save_model_folder(work, tiny_loaded.model, tiny_loaded.processor, readme="# tiny\n")
    registry = Registry(server)
    version = registry.register(
        folder,
        "served",
        alias="staging",
        **pyfunc_flavor(DEFAULT_GENERATION),
        requirements=["musicgen-train"],
    )
    assert int(version.version) == 1

    loaded = load_musicgen("models:/served@staging", registry_uri=server)
    saved = load_file(folder / "model.safetensors")
    state = loaded.model.state_dict()
    for name in ("decoder.lm_heads.0.weight", "enc_to_dec_proj.weight"):
        torch.testing.assert_close(state[name], saved[name], rtol=0, atol=0)

    capsys.readouterr()
    show = ["registry", "show", f"registry.uri={server}", "registry.name=served"]
    assert main([*show, "registry.alias=staging"]) == 0
    assert "uri: models:/served/1" in capsys.readouterr().out
    assert main([*show, "registry.version=9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"has no version 9 (versions: [1]; registry {server})")  # numbers
