"""The pyfunc model's precision: saved when it is registered, not taken from the environment of
whoever serves it (unless that environment says otherwise)."""

from __future__ import annotations

from types import SimpleNamespace

import cloudpickle
import pytest

from musicgen_train.generation.config import ENV_PRECISION
from musicgen_train.registry.pyfunc import MusicgenPyfunc, pyfunc_flavor
from musicgen_train.sources.registry_store import ARTIFACT_KEY

DEFAULTS = {"duration": 1.0, "guidance_scale": 3.0, "temperature": 1.0, "top_k": 250, "top_p": 0.0}


def _served(python_model, folder) -> str:
    """What a server does: unpickle the saved model, load its context; the engine's precision."""
    model = cloudpickle.loads(cloudpickle.dumps(python_model))
    model.load_context(SimpleNamespace(artifacts={ARTIFACT_KEY: str(folder)}))
    return model.engine.precision


def test_precision_is_saved_at_registration(tiny_model_dir, monkeypatch):
    monkeypatch.setenv(ENV_PRECISION, "fp32")  # the exporting CLI's generation.precision
    flavor = pyfunc_flavor(DEFAULTS)
    assert flavor["python_model"].precision == "fp32"
    monkeypatch.delenv(ENV_PRECISION)  # a server outside the CLI
    assert _served(flavor["python_model"], tiny_model_dir) == "fp32"


@pytest.mark.parametrize(
    "saved, environment, expected",
    [
        (None, None, "int8"),
        ("bf16", None, "bf16"),
        ("bf16", "fp32", "fp32"),
        (None, "fp32", "fp32"),
    ],
)
def test_environment_overrides_saved_and_auto_is_the_default(
    tiny_model_dir, monkeypatch, saved, environment, expected
):
    monkeypatch.delenv(ENV_PRECISION, raising=False)
    if environment:
        monkeypatch.setenv(ENV_PRECISION, environment)
    # None: a model registered before the precision was saved; auto is int8 on CPU.
    assert _served(MusicgenPyfunc(saved), tiny_model_dir) == expected


def test_explicit_and_defaults_precision(monkeypatch):
    monkeypatch.delenv(ENV_PRECISION, raising=False)
    assert pyfunc_flavor(DEFAULTS)["python_model"].precision == "auto"
    assert pyfunc_flavor({**DEFAULTS, "precision": "int8"})["python_model"].precision == "int8"
    assert pyfunc_flavor(DEFAULTS, precision="bf16")["python_model"].precision == "bf16"
