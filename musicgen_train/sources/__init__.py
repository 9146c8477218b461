"""Any model source -> a verified local model folder, and the stores models come from.

Above the core (``model``, ``generation``), below the stages: names (``tiny``), hub ids, folders,
Lightning / DeepSpeed checkpoints and ``models:/`` registry URIs all resolve here, and nowhere else.
The names below load on first use, so composing a config imports no torch.
"""

from musicgen_train.lazy import lazy_names

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

__getattr__ = lazy_names(__name__, _LAZY)
