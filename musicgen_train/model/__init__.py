"""The core of every model: load a folder or hub id, tiny models, delay pattern, LoRA, EMA.

Turning any model source (``tiny``, a checkpoint, ``models:/...``) into a folder is
``musicgen_train.sources``' job, one layer up. Names load on first use, so a command that only
composes its config never imports torch or transformers.
"""

from musicgen_train.errors import ModelNotFoundError
from musicgen_train.lazy import lazy_names

_LAZY = {"LoadedModel": "loader", "load_pretrained": "loader"}

__all__ = ["LoadedModel", "ModelNotFoundError", "load_pretrained"]

__getattr__ = lazy_names(__name__, _LAZY)
