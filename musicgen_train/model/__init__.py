"""Build or load MusicGen: config names, hub ids, local folders, checkpoints, registry URIs."""

from musicgen_train.model.loader import ModelNotFoundError, load_musicgen, resolve_model_source

__all__ = ["ModelNotFoundError", "load_musicgen", "resolve_model_source"]
