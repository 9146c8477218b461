"""One generation engine, used by evaluate, the notebooks, training samples and the service."""

from musicgen_train.generation.engine import GenerationEngine, GenerationParams

__all__ = ["GenerationEngine", "GenerationParams"]
