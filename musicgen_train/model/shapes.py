"""The shapes of the real checkpoints, for benchmarks that need real sizes but no download."""

from __future__ import annotations

from transformers import EncodecConfig, MusicgenDecoderConfig, T5Config


def encodec_32khz_config(**overrides) -> EncodecConfig:
    """facebook/encodec_32khz, MusicGen's codec: 4 codebooks of 2048 codes at 50 frames/s.
    ``overrides``: the same layout narrower (tests: ``hidden_size=16, num_filters=4``)."""
    values = dict(
        sampling_rate=32_000,
        audio_channels=1,
        target_bandwidths=[2.2],
        hidden_size=128,
        num_filters=64,
        num_residual_layers=1,
        upsampling_ratios=[8, 5, 4, 4],
        num_lstm_layers=2,
        codebook_size=2048,
        codebook_dim=128,
        normalize=False,
        chunk_length_s=None,
        overlap=None,
        use_causal_conv=False,
        pad_mode="reflect",
        norm_type="weight_norm",
    )
    return EncodecConfig(**{**values, **overrides})


def musicgen_small_decoder_config() -> MusicgenDecoderConfig:
    """facebook/musicgen-small's decoder: 1024 wide, 24 layers, 16 heads (420 M parameters)."""
    return MusicgenDecoderConfig(
        vocab_size=2048,
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        ffn_dim=4096,
        num_codebooks=4,
        max_position_embeddings=2048,
        pad_token_id=2048,
        bos_token_id=2048,
        decoder_start_token_id=2048,
    )


def t5_base_text_config() -> T5Config:
    """T5-base's encoder shape (musicgen-small's text encoder), with the ByT5 tokenizer's
    vocabulary so the tiny processor fits it: the text side's cost at its real size."""
    return T5Config(
        vocab_size=384,
        d_model=768,
        d_kv=64,
        d_ff=3072,
        num_layers=12,
        num_heads=12,
        feed_forward_proj="relu",
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
