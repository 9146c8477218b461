"""The models a service serves: loaded once through the shared loader, each with its engine."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from musicgen_train.generation import GenerationEngine
from musicgen_train.model import load_musicgen
from musicgen_train.serve.settings import ModelSpec

log = logging.getLogger(__name__)

# Files an exported model folder may carry about itself (written by `musicgen-train export`).
INFO_FILES = ("registry.json", "eval_report.json")


@dataclass
class ServedModel:
    spec: ModelSpec
    engine: GenerationEngine
    info: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def sample_rate(self) -> int:
        return self.engine.sample_rate

    @property
    def channels(self) -> int:
        return int(self.engine.model.config.audio_encoder.audio_channels)

    def describe(self) -> dict:
        config = self.engine.model.config
        return {
            "name": self.name,
            "source": self.spec.source,
            "path": self.engine.loaded.path,
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "frame_rate": self.engine.loaded.frame_rate,
            "num_codebooks": int(config.decoder.num_codebooks),
            "limits": {"max_duration": self.spec.max_duration},
            **self.info,
        }


def model_info(path: str) -> dict:
    """Registry version and evaluation metrics, when the model folder carries them."""
    folder = Path(path)
    info: dict = {"registry": None, "metrics": None}
    registry, report = folder / "registry.json", folder / "eval_report.json"
    if registry.is_file():
        info["registry"] = json.loads(registry.read_text())
    if report.is_file():
        data = json.loads(report.read_text())
        info["metrics"] = data.get("metrics", data)
    return info


def load_served_model(spec: ModelSpec) -> ServedModel:
    log.info("loading model %s from %s", spec.name, spec.source)
    loaded = load_musicgen(spec.source, tiny_seed=spec.tiny_seed)
    return ServedModel(spec=spec, engine=GenerationEngine(loaded), info=model_info(loaded.path))
