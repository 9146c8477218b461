"""The models a service serves: loaded once through the shared loader, each with its engine."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from musicgen_train.generation import GenerationEngine
from musicgen_train.model import load_musicgen
from musicgen_train.serve.settings import ModelSpec

log = logging.getLogger(__name__)


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
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "frame_rate": self.engine.loaded.frame_rate,
            "num_codebooks": int(config.decoder.num_codebooks),
            "limits": {"max_duration": self.spec.max_duration},
            **self.info,
        }


def model_info(source: str, registry_uri: str | None = None) -> dict:
    """Registry version and evaluation metrics (the version's ``metric.*`` tags) of a
    ``models:/`` source; other sources have neither."""
    if not source.startswith("models:/"):
        return {"registry": None, "metrics": None}
    from musicgen_train.registry.commands import METRIC_PREFIX
    from musicgen_train.registry.location import default_tracking_uri
    from musicgen_train.registry.resolve import parse_registry_uri
    from musicgen_train.registry.store import Registry

    registry = Registry(registry_uri or default_tracking_uri())
    version = registry.resolve(parse_registry_uri(source))
    tags = dict(version.tags or {})
    metrics = {
        key.removeprefix(METRIC_PREFIX): float(value)
        for key, value in tags.items()
        if key.startswith(METRIC_PREFIX)
    }
    return {
        "registry": {
            "uri": source,
            "name": version.name,
            "version": int(version.version),
            "aliases": sorted(version.aliases or []),
            "tracking_uri": registry.uri,
        },
        "metrics": metrics or None,
    }


def load_served_model(spec: ModelSpec, device: str = "cpu") -> ServedModel:
    log.info("loading model %s from %s on %s", spec.name, spec.source, device)
    loaded = load_musicgen(
        spec.source, tiny_seed=spec.tiny_seed, registry_uri=spec.registry_uri, device=device
    )
    info = model_info(spec.source, spec.registry_uri)
    return ServedModel(spec=spec, engine=GenerationEngine(loaded), info=info)
