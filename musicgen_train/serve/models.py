"""The models a service serves: what the API needs to know about each, and how one is loaded.

The generator that runs a model may live in another process (``serve.worker.isolation``), so the
API side keeps only ``ModelFacts``, a few picklable numbers read from the loaded model, and the
registry metadata; the weights stay with the generator.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from musicgen_train.generation import GenerationEngine
from musicgen_train.model.families import is_melody
from musicgen_train.serve.settings import ModelSpec
from musicgen_train.sources import load_musicgen

log = logging.getLogger(__name__)


def makes_long_form(engine: GenerationEngine) -> bool:
    """Whether the engine makes jobs longer than its window window by window: text models,
    with a stride inside the window (else a job stays within the model's positions)."""
    stride_fits = 0 < engine.extend_stride < engine.window_seconds
    return stride_fits and not is_melody(engine.model)


@dataclass(frozen=True)
class ModelFacts:
    sample_rate: int
    channels: int
    frame_rate: float
    num_codebooks: int
    max_duration: float = 600.0  # the longest clip the model's position table allows
    precision: str = "fp32"  # what the engine runs at (serve.precision resolved)
    melody: bool = False  # takes a melody reference (chroma conditioned)
    window_seconds: float = 30.0  # an audio prompt must be shorter than this
    # Text models make clips longer than the window window by window (generation/long_form.py);
    # melody models' jobs stay within the model's positions.
    long_form: bool = False

    @classmethod
    def of(cls, engine: GenerationEngine) -> ModelFacts:
        config = engine.model.config
        return cls(
            sample_rate=int(engine.sample_rate),
            # Stereo MusicGen: a mono codec decodes each channel's codebooks (decoder's count).
            channels=int(config.decoder.audio_channels),
            frame_rate=float(engine.loaded.frame_rate),
            num_codebooks=int(config.decoder.num_codebooks),
            max_duration=float(engine.max_duration),
            precision=str(engine.precision),
            melody=is_melody(engine.model),
            window_seconds=float(engine.window_seconds),
            long_form=makes_long_form(engine),
        )


@dataclass
class ServedModel:
    spec: ModelSpec
    facts: ModelFacts
    info: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def sample_rate(self) -> int:
        return self.facts.sample_rate

    @property
    def channels(self) -> int:
        return self.facts.channels

    @property
    def max_duration(self) -> float:
        """The configured limit; for a model without long form, never beyond what its
        positions allow."""
        if self.facts.long_form:
            return self.spec.max_duration
        return min(self.spec.max_duration, self.facts.max_duration)

    def is_long(self, duration: float) -> bool:
        """Whether a job of ``duration`` seconds is made window by window (long form)."""
        return self.facts.long_form and duration > self.facts.window_seconds + 1e-9

    def describe(self) -> dict:
        return {
            "name": self.name,
            "source": self.spec.source,
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "frame_rate": self.facts.frame_rate,
            "num_codebooks": self.facts.num_codebooks,
            "precision": self.facts.precision,
            "base": self.spec.base,  # an adapter's base model (served by this server), or None
            "melody": self.facts.melody,  # accepts a melody reference
            "limits": {
                "max_duration": self.max_duration,
                "max_audio_prompt_seconds": self.facts.window_seconds,
                # longer jobs are made window by window, and streamed whole once made
                "window_seconds": self.facts.window_seconds,
                "long_form": self.facts.long_form,
            },
            **self.info,
        }


def model_info(source: str, registry_uri: str | None = None) -> dict:
    """Registry version and evaluation metrics (the version's ``metric.*`` tags) of a
    ``models:/`` source; other sources have neither."""
    if not source.startswith("models:/"):
        return {"registry": None, "metrics": None}
    from musicgen_train.registry.commands import METRIC_PREFIX
    from musicgen_train.sources.registry_location import default_tracking_uri
    from musicgen_train.sources.registry_store import Registry
    from musicgen_train.sources.registry_uri import parse_registry_uri

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


def load_engine(
    spec: ModelSpec, device: str = "cpu", precision: str | None = None, threads: int | None = None
) -> GenerationEngine:
    """``precision`` and ``threads``: None = the engine's own rule (``generation.*``)."""
    log.info("loading model %s from %s on %s", spec.name, spec.source, device)
    loaded = load_musicgen(
        spec.source, tiny_seed=spec.tiny_seed, registry_uri=spec.registry_uri, device=device
    )
    return GenerationEngine(loaded, precision=precision, threads=threads)
