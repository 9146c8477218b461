"""A prompt's text condition: T5's states, and a text model's cross-attention K/V from them.

As ``MusicgenForConditionalGeneration.forward`` makes them: the text encoder over the prompt,
``enc_to_dec_proj`` where the sizes differ, padding zeroed. The empty prompt is the null
condition (zero states), as training blanks captions. A text model's row keeps each layer's
cross-attention K/V (computed once, here); a melody model's row puts the states after its chroma
in its decoder input prefix (``condition_prefix.py``).
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

# T5's model_max_length. Its relative positions accept any length, but a prompt of thousands of
# tokens (a pasted document) costs T5 and every step's cross-attention for nothing the model has
# learnt: MusicGen was trained on short descriptions (this project truncates training captions
# to finetune.max_text_tokens, 256 by default). Up to here the encoding is transformers' own.
MAX_PROMPT_TOKENS = 512


def prompt_inputs(processor, prompt: str) -> dict:
    """The prompt's token ids and mask, at most ``MAX_PROMPT_TOKENS`` (T5's end token kept)."""
    inputs = processor(
        text=[prompt],
        padding=True,
        truncation=True,
        max_length=MAX_PROMPT_TOKENS,
        return_tensors="pt",
    )
    if inputs["input_ids"].shape[1] == MAX_PROMPT_TOKENS:  # at the limit: maybe cut, count
        whole = len(processor(text=[prompt])["input_ids"][0])
        if whole > MAX_PROMPT_TOKENS:
            log.warning(
                "a prompt of %d tokens (%d characters, %r...) is cut to its first %d",
                whole,
                len(prompt),
                prompt[:40],
                MAX_PROMPT_TOKENS,
            )
    return inputs


def text_states(loop, prompt: str) -> torch.Tensor:
    """The prompt's encoder states ``[1, T, D]`` in the decoder's dtype."""
    inputs = prompt_inputs(loop.processor, prompt)
    encoder = loop.model.text_encoder
    device = next(encoder.parameters()).device
    input_ids = inputs["input_ids"].to(device)
    mask = inputs["attention_mask"].to(device)
    states = encoder(input_ids=input_ids, attention_mask=mask).last_hidden_state
    if (
        encoder.config.hidden_size != loop.config.hidden_size
        and getattr(loop.config, "cross_attention_hidden_size", None) is None
    ):
        states = loop.model.enc_to_dec_proj(states)
    states = (states * mask[..., None]).to(device=loop.device, dtype=loop.dtype)
    if not prompt.strip():
        # "" is the null condition: zero states (cross-attention then adds exactly nothing),
        # not T5's encoding of a lone end-of-sequence token.
        states = torch.zeros_like(states)
    return states


def cross_kv(loop, prompt: str) -> list:
    """Each layer's cross-attention ``(K, V)``, ``[1, H, T, D]`` in the cache's dtype."""
    states = text_states(loop, prompt)
    out = []
    for layer in loop.decoder.layers:
        attn = layer.encoder_attn
        shape = (1, states.shape[1], loop.num_heads, loop.head_dim)
        k = attn.k_proj(states).view(shape).transpose(1, 2)
        v = attn.v_proj(states).view(shape).transpose(1, 2)
        out.append((k.to(loop.cache_dtype), v.to(loop.cache_dtype)))
    return out
