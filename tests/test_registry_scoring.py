"""The pyfunc as an MLflow client meets it: ``load_model(...).predict`` and the scoring server
that ``mlflow models serve`` runs (its app, in-process), with audio as floats or as file bytes,
and bad input answered with one 400 line, not a traceback."""

from __future__ import annotations

import base64
import io
import warnings

import mlflow
import numpy as np
import pytest
import soundfile as sf
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import scoring_server
from starlette.testclient import TestClient

from musicgen_train.registry.pyfunc import pyfunc_flavor
from musicgen_train.sources.registry_store import ARTIFACT_KEY

DEFAULTS = {"duration": 1.0, "guidance_scale": 3.0, "temperature": 1.0, "top_k": 250, "top_p": 0.0}
PARAMS = {"duration": 0.2, "seed": 3, "top_k": 20}


@pytest.fixture(scope="module")
def pyfunc(tmp_path_factory, tiny_model_dir):
    """The pyfunc model as a registry version holds it (what ``Registry.register`` saves)."""
    path = tmp_path_factory.mktemp("pyfunc") / "model"
    flavor = pyfunc_flavor({**DEFAULTS, "precision": "fp32"})
    with warnings.catch_warnings():  # save_model's advice to add an input example
        warnings.simplefilter("ignore", UserWarning)
        mlflow.pyfunc.save_model(
            path=str(path), artifacts={ARTIFACT_KEY: str(tiny_model_dir)}, **flavor
        )
    return mlflow.pyfunc.load_model(str(path))


@pytest.fixture
def client(pyfunc, monkeypatch):
    # init() marks the process as a serving environment; the mark must not outlive the test.
    monkeypatch.setenv("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", "false")
    return TestClient(scoring_server.init(pyfunc))


def _decoded(data: bytes) -> tuple[np.ndarray, int]:
    audio, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return audio.T, rate


@pytest.mark.parametrize("audio_format", ["wav", "flac"])
def test_file_bytes_hold_the_same_audio_as_the_floats(pyfunc, audio_format):
    floats = pyfunc.predict({"prompt": ["calm piano"]}, params=PARAMS)
    files = pyfunc.predict(
        {"prompt": ["calm piano"]}, params={**PARAMS, "audio_format": audio_format}
    )
    audio, rate = _decoded(files.audio[0])
    assert rate == files.sample_rate[0] == 32000
    assert audio.shape == floats.audio[0].shape == (1, 6400)
    # the same seed, the same clip; 16-bit samples are within half a step of the floats
    np.testing.assert_allclose(audio, np.clip(floats.audio[0], -1, 1), atol=2e-4)


def test_scoring_server_sends_base64_files_a_fraction_of_the_float_json(client):
    body = {"inputs": {"prompt": ["calm piano", "fast drums"]}, "params": PARAMS}
    floats = client.post("/invocations", json=body)
    flac = client.post("/invocations", json={**body, "params": {**PARAMS, "audio_format": "flac"}})
    assert (floats.status_code, flac.status_code) == (200, 200)
    rows = flac.json()["predictions"]
    assert [row["prompt"] for row in rows] == ["calm piano", "fast drums"]
    audio, rate = _decoded(base64.b64decode(rows[1]["audio"]))
    assert (audio.shape, rate) == ((1, 6400), 32000)
    np.testing.assert_allclose(audio, floats.json()["predictions"][1]["audio"], atol=2e-4)
    assert len(flac.content) * 4 < len(floats.content)


@pytest.mark.parametrize(
    "payload, message",
    [
        ({"params": {"duration": 0}}, "duration=0.0 is not allowed: seconds above 0"),
        ({"params": {"top_p": 2.0}}, "top_p=2.0 is not allowed: from 0 to 1"),
        ({"params": {"temperature": 0.0}}, "temperature=0.0 is not allowed: above 0"),
        ({"params": {"top_k": -3}}, "top_k=-3 is not allowed"),
        ({"params": {"audio_format": "mp3"}}, "audio_format='mp3' is not allowed"),
        (
            {"params": {"duration": 7200}},
            "duration=7200 is not allowed: long form makes up to 3600",
        ),
        ({"dataframe_records": [{"prompt": None}]}, "prompt 0 is null"),
        ({"inputs": {"prompt": ["jazz", "  "]}}, "prompt 1 is empty"),
        ({"inputs": {"text": ["jazz"]}}, "missing inputs ['prompt']"),
    ],
)
def test_bad_input_is_one_400_line_without_a_traceback(client, payload, message):
    body = {"inputs": {"prompt": ["calm piano"]}, **payload}
    if "dataframe_records" in payload:
        del body["inputs"]
    response = client.post("/invocations", json=body)
    assert response.status_code == 400
    error = response.json()
    assert error["error_code"] == "INVALID_PARAMETER_VALUE"
    assert message in error["message"]
    assert "stack_trace" not in error


def test_predict_raises_one_mlflow_error_for_bad_params(pyfunc):
    with pytest.raises(MlflowException, match="duration=0.0 is not allowed") as caught:
        pyfunc.predict({"prompt": ["calm piano"]}, params={"duration": 0.0})
    assert caught.value.error_code == "INVALID_PARAMETER_VALUE"
