"""The core of every model: load a folder or hub id, tiny models, delay pattern, LoRA, EMA.

Turning any model source (``tiny``, a checkpoint, ``models:/...``) into a folder is
``musicgen_train.sources``' job, one layer up.
"""

from musicgen_train.model.loader import LoadedModel, ModelNotFoundError, load_pretrained

__all__ = ["LoadedModel", "ModelNotFoundError", "load_pretrained"]
