"""Any model source -> a verified local model folder, and the stores models come from.

Above the core (``model``, ``generation``), below the stages: names (``tiny``), hub ids, folders,
Lightning / DeepSpeed checkpoints and ``models:/`` registry URIs all resolve here, and nowhere else.
The names below load on first use, so composing a config imports no torch.
"""

_LAZY = {
    "attach_codec": "resolve",
    "load_checkpoint": "resolve",
    "load_codec": "resolve",
    "load_musicgen": "resolve",
    "load_without_codec": "resolve",
    "resolve_model_source": "resolve",
    "load_options": "registry_location",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
