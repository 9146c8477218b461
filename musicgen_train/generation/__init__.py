"""One generation engine, used by evaluate, the notebooks, training samples and the service.

Names load on first use, so importing the package costs nothing until a model generates.
"""

_LAZY = {
    "GenerationEngine": "engine",
    "GenerationParams": "engine",
    "melody_conditioning": "melody",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
