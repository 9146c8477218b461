"""The MLflow pyfunc face of an exported model: prompts in, audio out.

``mlflow.pyfunc.load_model("models:/name@alias").predict({"prompt": ["calm piano"]},
params={"duration": 4, "seed": 1})`` returns a DataFrame with one row per prompt: ``prompt``,
``audio`` (float32 ``[channels, samples]``) and ``sample_rate``. The model folder itself is the
pyfunc model's only artifact, so the pyfunc and the plain transformers model are one and the same.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from musicgen_train.sources.registry_store import ARTIFACT_KEY


def signature(defaults: Mapping) -> ModelSignature:
    """Input: a ``prompt`` column. Params: the generation settings, defaulting to the export's."""
    params = [
        ParamSpec("duration", "double", float(defaults["duration"])),
        ParamSpec("guidance_scale", "double", float(defaults["guidance_scale"])),
        ParamSpec("temperature", "double", float(defaults["temperature"])),
        ParamSpec("top_k", "long", int(defaults["top_k"])),
        ParamSpec("top_p", "double", float(defaults["top_p"])),
        ParamSpec("seed", "long", None),
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
            prompts.extend(str(v) for v in value)
        else:
            prompts.append(str(value))
    if not prompts:
        raise ValueError("no prompt given")
    return prompts


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

        prompts = prompts_from(model_input)
        settings = {k: v for k, v in (params or {}).items() if v is not None}
        audio = self.engine.generate(prompts, GenerationParams(**settings))
        return pd.DataFrame(
            {
                "prompt": prompts,
                "audio": list(audio),
                "sample_rate": [self.engine.sample_rate] * len(prompts),
            }
        )


def pyfunc_flavor(defaults: Mapping, precision: str | None = None) -> dict:
    """``Registry.register`` keywords that log a version as this pyfunc model; its precision is
    ``precision``, else ``defaults["precision"]``, else this process's ``generation.precision``
    (as the CLI exported it), else ``auto``."""
    from musicgen_train.generation.config import env_precision

    precision = precision or defaults.get("precision") or env_precision("auto")
    return {"python_model": MusicgenPyfunc(precision), "signature": signature(defaults)}
