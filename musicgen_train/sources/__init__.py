"""Any model source -> a verified local model folder, and the stores models come from.

Above the core (``model``, ``generation``), below the stages: names (``tiny``), hub ids, folders,
Lightning / DeepSpeed checkpoints and ``models:/`` registry URIs all resolve here, and nowhere else.
"""

from musicgen_train.sources.resolve import (
    attach_codec,
    load_checkpoint,
    load_codec,
    load_musicgen,
    load_options,
    load_without_codec,
    resolve_model_source,
)

__all__ = [
    "attach_codec",
    "load_checkpoint",
    "load_codec",
    "load_musicgen",
    "load_options",
    "load_without_codec",
    "resolve_model_source",
]
