"""Tiny random-weight models of the other MusicGen families, built offline like ``tiny``.

- ``tiny-stereo``: transformers' stereo layout. The codec is the same mono EnCodec (4 codebooks at
  50 frames/s), run on the left and on the right channel; the decoder reads 8 codebooks,
  interleaved left, right, left, right (``audio_channels=2``), and its delay pattern delays each
  left/right pair together (``build_delay_pattern_mask``).
- ``tiny-melody``: ``MusicgenMelodyForConditionalGeneration`` with the tiny T5, EnCodec and
  decoder of ``tiny``, conditioned on 12 chroma bins (235 frames = 30 s at hop 4096) prepended to
  the text, a ByT5 tokenizer and a melody feature extractor config (``preprocessor_config.json``).

Each is saved with ``save_pretrained`` once and loaded back through the same loader as a real
checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from transformers import (
    ByT5Tokenizer,
    EncodecFeatureExtractor,
    MusicgenForConditionalGeneration,
    MusicgenMelodyConfig,
    MusicgenMelodyDecoderConfig,
    MusicgenMelodyForConditionalGeneration,
    MusicgenProcessor,
)

from musicgen_train.model.chroma import ChromaExtractor, MelodyProcessor
from musicgen_train.model.tiny import (
    SAMPLE_RATE,
    build_tiny_processor,
    cache_root,
    init_codebooks,
    tiny_config,
)

TINY_NAMES = ("tiny", "tiny-stereo", "tiny-melody")


def tiny_stereo_config(**sizes):
    config = tiny_config(**{"num_codebooks": 8, **sizes})
    per_channel = config.decoder.num_codebooks // 2
    mono = tiny_config(**{**sizes, "num_codebooks": per_channel})
    config.audio_encoder = mono.audio_encoder  # one channel at a time: 4 codebooks each
    config.decoder.audio_channels = 2
    return config


def tiny_melody_config(**sizes) -> MusicgenMelodyConfig:
    base = tiny_config(**sizes)
    decoder = MusicgenMelodyDecoderConfig(**{
        k: getattr(base.decoder, k)
        for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                  "ffn_dim", "num_codebooks", "max_position_embeddings", "pad_token_id",
                  "bos_token_id")
    })  # fmt: skip
    chroma = ChromaExtractor()
    config = MusicgenMelodyConfig(
        text_encoder=base.text_encoder.to_dict(),
        audio_encoder=base.audio_encoder.to_dict(),
        decoder=decoder.to_dict(),
        num_chroma=chroma.num_chroma,
        chroma_length=chroma.frames(chroma.chunk_length * chroma.sampling_rate),
    )
    config.decoder_start_token_id = base.decoder_start_token_id
    config.pad_token_id = base.pad_token_id
    return config


def build_tiny_family(name: str, seed: int = 0, **sizes):
    """A freshly initialised tiny model of family ``name`` (``tiny-stereo`` or ``tiny-melody``)."""
    if name == "tiny-stereo":
        config, cls = tiny_stereo_config(**sizes), MusicgenForConditionalGeneration
    elif name == "tiny-melody":
        config, cls = tiny_melody_config(**sizes), MusicgenMelodyForConditionalGeneration
    else:
        raise ValueError(f"no tiny model family {name!r}: one of {', '.join(TINY_NAMES[1:])}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
        init_codebooks(model.audio_encoder)
    generation = model.generation_config
    generation.decoder_start_token_id = config.decoder_start_token_id
    generation.pad_token_id = config.pad_token_id
    generation.max_length = 1500
    generation.do_sample = True
    generation.guidance_scale = 3.0
    generation.top_k = 50
    return model


def build_tiny_family_processor(name: str):
    if name == "tiny-melody":
        return MelodyProcessor(ByT5Tokenizer(), ChromaExtractor())
    if name == "tiny-stereo":  # audio prompts come as [batch, 2, samples]
        extractor = EncodecFeatureExtractor(feature_size=2, sampling_rate=SAMPLE_RATE)
        return MusicgenProcessor(feature_extractor=extractor, tokenizer=ByT5Tokenizer())
    return build_tiny_processor()


def ensure_tiny_family(name: str, seed: int = 0, root: Path | None = None, **sizes) -> Path:
    """Save the tiny model of family ``name`` once (keyed by name, seed and sizes); its folder."""
    if name == "tiny":
        from musicgen_train.model.tiny import ensure_tiny_model

        return ensure_tiny_model(seed=seed, root=root, **sizes)
    key = json.dumps({"family": name, "seed": seed, **sizes}, sort_keys=True).encode()
    folder = (root or cache_root()) / "models" / f"{name}-{hashlib.sha256(key).hexdigest()[:12]}"
    if (folder / "config.json").exists():
        return folder
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    build_tiny_family(name, seed, **sizes).save_pretrained(tmp)
    build_tiny_family_processor(name).save_pretrained(tmp)
    tmp.rename(folder) if not folder.exists() else None
    return folder
