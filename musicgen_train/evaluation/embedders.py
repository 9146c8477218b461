"""The embedder registry: names -> ``"module:Class"`` strings, loaded when first built.

The registry imports the embedder modules lazily, by name, and the embedder modules import only
``embedder_base`` (never this file): there is no import circle, at module or function level.
A new embedder is a new module with an ``Embedder`` subclass and one line in ``REGISTRY``.
"""

from __future__ import annotations

from importlib import import_module

from musicgen_train.evaluation.embedder_base import (  # noqa: F401 (public names kept here)
    Embedder,
    EmbedderUnavailable,
    state_dict_digest,
)

REGISTRY = {
    "logmel": "musicgen_train.evaluation.logmel:LogMelEmbedder",
    "vggish": "musicgen_train.evaluation.vggish:VGGishEmbedder",
    "clap": "musicgen_train.evaluation.clap:ClapEmbedder",
    "encodec": "musicgen_train.evaluation.encodec_embedder:EncodecEmbedder",
}
EMBEDDERS = tuple(REGISTRY)


def embedder_class(name: str) -> type[Embedder]:
    """The class registered as ``name`` (its module imported now)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown embedder {name!r}: choose one of {list(EMBEDDERS)}")
    module, _, attribute = REGISTRY[name].partition(":")
    return getattr(import_module(module), attribute)


def build_embedder(name: str, eval_cfg, *, codec=None, codec_source: str | None = None) -> Embedder:
    """The embedder ``name`` configured by ``eval_cfg.<name>``; raises EmbedderUnavailable.

    Each class builds itself with ``from_config(section, codec=..., codec_source=...)``;
    ``codec`` is the evaluated MusicGen's EnCodec, used when ``eval.encodec.checkpoint`` is
    ``model``.
    """
    cls = embedder_class(name)
    return cls.from_config(eval_cfg.get(name), codec=codec, codec_source=codec_source)
