"""A MusicGen with random weights, small enough for tests and the offline demo.

It is built deterministically from a seed and saved with ``save_pretrained``; every later use
loads it back with ``from_pretrained``, the same path a real hub checkpoint takes. Its shape is
MusicGen's in miniature: ByT5 tokenizer, a tiny T5, a tiny EnCodec at 32 kHz with 4 codebooks
and 50 frames per second, and a tiny decoder.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import torch
from transformers import (
    ByT5Tokenizer,
    EncodecConfig,
    EncodecFeatureExtractor,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenForConditionalGeneration,
    MusicgenProcessor,
    T5Config,
)

TINY_CODEBOOK_SIZE = 64
SAMPLE_RATE = 32_000
# EnCodec's hop is the product of its upsampling ratios: 8*5*4*4 = 640 samples = 50 frames/s.
UPSAMPLING_RATIOS = [8, 5, 4, 4]


def tiny_config(
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    codebook_size: int = TINY_CODEBOOK_SIZE,
    num_codebooks: int = 4,
) -> MusicgenConfig:
    """The configuration of the tiny model; every size is a keyword so tests can shrink it."""
    text = T5Config(
        vocab_size=384,  # ByT5: 256 bytes + 3 special tokens + 125 extra ids
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    # EnCodec derives its number of codebooks from the bandwidth: codebooks * frames/s * bits
    # per code. musicgen-small: 4 * 50 * 11 bits = 2.2 kbps.
    frame_rate = SAMPLE_RATE // math.prod(UPSAMPLING_RATIOS)
    audio = EncodecConfig(
        sampling_rate=SAMPLE_RATE,
        audio_channels=1,
        target_bandwidths=[num_codebooks * frame_rate * math.log2(codebook_size) / 1000],
        hidden_size=32,
        num_filters=4,
        num_residual_layers=1,
        upsampling_ratios=UPSAMPLING_RATIOS,
        num_lstm_layers=1,
        codebook_size=codebook_size,
        codebook_dim=32,
        normalize=False,
        chunk_length_s=None,
        overlap=None,
    )
    decoder = MusicgenDecoderConfig(
        vocab_size=codebook_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        ffn_dim=hidden_size * 4,
        num_codebooks=num_codebooks,
        max_position_embeddings=2048,
        pad_token_id=codebook_size,
        bos_token_id=codebook_size,
        decoder_start_token_id=codebook_size,
    )
    config = MusicgenConfig(text_encoder=text, audio_encoder=audio, decoder=decoder)
    # A fresh config leaves these unset and forward(labels=...) then fails (see REFERENCE.md).
    config.decoder_start_token_id = codebook_size
    config.pad_token_id = codebook_size
    return config


def build_tiny_model(seed: int = 0, **sizes) -> MusicgenForConditionalGeneration:
    """A freshly initialised tiny MusicGen; the same seed always gives the same weights."""
    config = tiny_config(**sizes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MusicgenForConditionalGeneration(config)
        init_codebooks(model.audio_encoder)
    model.generation_config.decoder_start_token_id = config.decoder_start_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.max_length = 1500
    model.generation_config.do_sample = True
    model.generation_config.guidance_scale = 3.0
    model.generation_config.top_k = 50
    return model


@torch.no_grad()
def init_codebooks(codec, seconds: float = 4.0) -> None:
    """Give a randomly initialised EnCodec usable codebooks.

    transformers leaves the codebooks of a fresh EnCodec at zero, so every frame would quantise
    to code 0 and decode to the same sound. Like EnCodec's own k-means initialisation (one step),
    each residual codebook takes its entries from encoder frames of a noise-and-tones signal.
    """
    rate = codec.config.sampling_rate
    t = torch.arange(int(seconds * rate)) / rate
    tones = sum(torch.sin(2 * torch.pi * f * t) for f in (110.0, 440.0, 1760.0)) / 3
    signal = (0.5 * tones + 0.3 * torch.randn_like(t)).reshape(1, 1, -1)
    residual = codec.encoder(signal)[0].T  # [frames, dim]
    for layer in codec.quantizer.layers:
        book = layer.codebook
        picks = torch.randint(0, residual.shape[0], (book.embed.shape[0],))
        book.embed.copy_(residual[picks])
        book.embed_avg.copy_(residual[picks])
        book.cluster_size.fill_(1.0)
        residual = residual - book.embed[torch.cdist(residual, book.embed).argmin(dim=1)]


def build_tiny_processor() -> MusicgenProcessor:
    extractor = EncodecFeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE)
    return MusicgenProcessor(feature_extractor=extractor, tokenizer=ByT5Tokenizer())


def cache_root() -> Path:
    """Where built models and other derived files live; ``MUSICGEN_TRAIN_CACHE`` moves it."""
    default = Path.home() / ".cache" / "musicgen-train"
    return Path(os.environ.get("MUSICGEN_TRAIN_CACHE", default)).expanduser()


def ensure_tiny_model(seed: int = 0, root: Path | None = None, **sizes) -> Path:
    """Save the tiny model once (keyed by seed and sizes) and return its folder."""
    key = hashlib.sha256(json.dumps({"seed": seed, **sizes}, sort_keys=True).encode()).hexdigest()
    folder = (root or cache_root()) / "models" / f"tiny-{key[:12]}"
    if (folder / "config.json").exists():
        return folder
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    build_tiny_model(seed, **sizes).save_pretrained(tmp)
    build_tiny_processor().save_pretrained(tmp)
    tmp.rename(folder) if not folder.exists() else None
    return folder
