"""The MLflow pyfunc face of an exported model: prompts in, audio out.

``mlflow.pyfunc.load_model("models:/name@alias").predict({"prompt": ["calm piano"]},
params={"duration": 4, "seed": 1})`` returns a DataFrame with one row per prompt: ``prompt``,
``audio`` and ``sample_rate``. ``audio`` is float32 ``[channels, samples]``, or with
``params={"audio_format": "wav"|"flac"}`` the bytes of that file (16-bit), which MLflow's
scoring server sends as base64: a small fraction of the float arrays' JSON. The model folder
itself is the pyfunc model's only artifact, so the pyfunc and the plain transformers model are
one and the same.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from musicgen_train.errors import UserError
from musicgen_train.sources.registry_store import ARTIFACT_KEY

AUDIO_FORMATS = ("float", "wav", "flac")

# What each generation param allows (the service's limits, without its upper bounds): checked
# before generating, so a bad value is one line, not a traceback from inside the sampler.
ALLOWED = {
    "duration": (lambda v: v > 0, "seconds above 0"),
    "guidance_scale": (lambda v: v >= 0, "0 or more (1 turns guidance off)"),
    "temperature": (lambda v: v > 0, "above 0"),
    "top_k": (lambda v: v >= 0, "0 or more (0 turns top-k off)"),
    "top_p": (lambda v: 0 <= v <= 1, "from 0 to 1 (0 turns top-p off)"),
    "seed": (lambda v: 0 <= v < 2**63, "an integer of 0 or more"),
}


def signature(defaults: Mapping) -> ModelSignature:
    """Input: a ``prompt`` column. Params: the generation settings, defaulting to the export's,
    and ``audio_format``."""
    params = [
        ParamSpec("duration", "double", float(defaults["duration"])),
        ParamSpec("guidance_scale", "double", float(defaults["guidance_scale"])),
        ParamSpec("temperature", "double", float(defaults["temperature"])),
        ParamSpec("top_k", "long", int(defaults["top_k"])),
        ParamSpec("top_p", "double", float(defaults["top_p"])),
        ParamSpec("seed", "long", None),
        ParamSpec("audio_format", "string", "float"),
    ]
    return ModelSignature(inputs=Schema([ColSpec("string", "prompt")]), params=ParamSchema(params))


def prompts_from(model_input) -> list[str]:
    """Prompts from a DataFrame or dict with a ``prompt`` column, a list, or one string."""
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, pd.DataFrame | Mapping):
        if "prompt" not in model_input:
            raise ValueError("the input needs a 'prompt' column (or key) holding the prompts")
        model_input = model_input["prompt"]
    values = [model_input] if isinstance(model_input, str) else model_input
    prompts: list[str] = []
    for value in values:
        # MLflow turns {"prompt": [...]} into a one-row frame whose cell holds the whole list.
        if isinstance(value, list | tuple | np.ndarray):
            prompts.extend(_prompt(v, len(prompts)) for v in value)
        else:
            prompts.append(_prompt(value, len(prompts)))
    if not prompts:
        raise ValueError("no prompt given")
    return prompts


def _prompt(value, index: int) -> str:
    """One prompt's text; a null cell (MLflow's schema lets it through) or blank text would
    otherwise be generated for as the text "None" or "nan", or with no text at all."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise ValueError(f"prompt {index} is null: every row needs a text prompt")
    text = str(value)
    if not text.strip():
        raise ValueError(f"prompt {index} is empty: every row needs a text prompt")
    return text


def generation_settings(params: Mapping | None) -> tuple[dict, str]:
    """The ``GenerationParams`` keywords and the audio format asked for, each checked."""
    settings = {k: v for k, v in (params or {}).items() if v is not None}
    audio_format = str(settings.pop("audio_format", "float")).lower()
    if audio_format not in AUDIO_FORMATS:
        raise ValueError(f"audio_format={audio_format!r} is not allowed: one of {AUDIO_FORMATS}")
    for name, value in settings.items():
        if name not in ALLOWED:  # MLflow drops unknown names; a direct call may not
            raise ValueError(f"unknown param {name!r}: one of {[*ALLOWED, 'audio_format']}")
        check, allowed = ALLOWED[name]
        if not check(float(value)):  # NaN fails every check
            raise ValueError(f"{name}={value!r} is not allowed: {allowed}")
    return settings, audio_format


class MusicgenPyfunc(PythonModel):
    """Wraps the project's GenerationEngine around the exported model folder.

    ``precision`` (``generation.precision`` when the model was registered) is saved with the
    pyfunc model, so a server started outside ``musicgen-train`` (``mlflow models serve``, a
    notebook) runs at it; ``MUSICGEN_GENERATION_PRECISION`` (what the CLI exports) overrides
    it; models registered before it was saved run at ``auto``."""

    def __init__(self, precision: str | None = None):
        self.precision = precision

    def load_context(self, context) -> None:
        from musicgen_train.generation import GenerationEngine
        from musicgen_train.generation.config import env_precision
        from musicgen_train.sources import load_musicgen

        precision = env_precision(None) or getattr(self, "precision", None) or "auto"
        # load_musicgen verifies the folder's checksums before loading it.
        loaded = load_musicgen(context.artifacts[ARTIFACT_KEY])
        self.engine = GenerationEngine(loaded, precision=precision)

    # A DataFrame hint tells MLflow not to infer a signature from hints: ours is given at export.
    def predict(
        self, context, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        from musicgen_train.generation import GenerationParams

        # MLflow's scoring server turns an MlflowException into a 400 carrying its message;
        # any other exception becomes "unexpected error" with the traceback for the client.
        try:
            prompts = prompts_from(model_input)
            settings, audio_format = generation_settings(params)
        except ValueError as err:
            raise MlflowException.invalid_parameter_value(str(err)) from None
        try:  # the engine's own checks: a duration beyond the model's limit, ...
            audio = self.engine.generate(prompts, GenerationParams(**settings))
        except UserError as err:
            raise MlflowException.invalid_parameter_value(str(err)) from None
        rate = self.engine.sample_rate
        return pd.DataFrame(
            {
                "prompt": prompts,
                "audio": [_encoded(clip, rate, audio_format) for clip in audio],
                "sample_rate": [rate] * len(prompts),
            }
        )


def _encoded(clip: np.ndarray, sample_rate: int, audio_format: str) -> np.ndarray | bytes:
    from musicgen_train.audio import encode_audio_bytes

    return clip if audio_format == "float" else encode_audio_bytes(clip, sample_rate, audio_format)


def pyfunc_flavor(defaults: Mapping, precision: str | None = None) -> dict:
    """``Registry.register`` keywords that log a version as this pyfunc model; its precision is
    ``precision``, else ``defaults["precision"]``, else this process's ``generation.precision``
    (as the CLI exported it), else ``auto``."""
    from musicgen_train.generation.config import env_precision

    precision = precision or defaults.get("precision") or env_precision("auto")
    return {"python_model": MusicgenPyfunc(precision), "signature": signature(defaults)}
