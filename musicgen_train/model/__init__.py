"""The core of every model: load a folder or hub id, tiny models, delay pattern, LoRA, EMA.

Turning any model source (``tiny``, a checkpoint, ``models:/...``) into a folder is
``musicgen_train.sources``' job, one layer up. Names load on first use, so a command that only
composes its config never imports torch or transformers.
"""

from musicgen_train.errors import ModelNotFoundError

_LAZY = {"LoadedModel": "loader", "load_pretrained": "loader"}

__all__ = ["LoadedModel", "ModelNotFoundError", "load_pretrained"]


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
