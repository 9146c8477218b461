"""One generation engine, used by evaluate, the notebooks, training samples and the service.

Names load on first use, so importing the package costs nothing until a model generates.
"""

from musicgen_train.lazy import lazy_names

_LAZY = {
    "GenerationEngine": "engine",
    "GenerationParams": "engine",
    "melody_conditioning": "melody",
}

__all__ = sorted(_LAZY)

__getattr__ = lazy_names(__name__, _LAZY)
