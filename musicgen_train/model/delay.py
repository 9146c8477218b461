"""The codebook delay pattern, applied to raw EnCodec codes to make training labels.

MusicGen predicts its K codebooks in parallel with codebook k running k frames late, so that
frame t of codebook k is predicted after frame t of codebooks 0..k-1 has been seen. ``generate``
builds this pattern itself; ``forward(labels=...)`` does not, it only shifts labels right. We
therefore delay the codes here with transformers' own ``build_delay_pattern_mask``, so training
sees exactly the layout that ``generate`` produces:

    codebook 0:  c0 c1 c2 c3  P  P  P
    codebook 1:   P c0 c1 c2 c3  P  P
    codebook 2:   P  P c0 c1 c2 c3  P
    codebook 3:   P  P  P c0 c1 c2 c3      (P = pad_token_id; frames T -> T + K - 1)

Stereo models (``audio_channels=2``) interleave left and right codebooks (8 = 4 per channel) and
delay each left/right pair together: codebooks 2k and 2k + 1 run k frames late, frames
T -> T + K/2 - 1. ``build_delay_pattern_mask`` knows this from the decoder's config.
"""

from __future__ import annotations

import torch
from transformers import MusicgenForCausalLM

IGNORE_INDEX = -100  # labels the cross-entropy skips


def delay_steps(decoder: MusicgenForCausalLM) -> int:
    """How many codebooks are delayed one after another: K, or K/2 for stereo."""
    channels = int(getattr(decoder.config, "audio_channels", 1) or 1)
    return int(decoder.config.num_codebooks) // channels


def delay_codes(
    decoder: MusicgenForCausalLM, codes: torch.Tensor, pad_token_id: int
) -> torch.Tensor:
    """Raw codes ``[B, K, T]`` -> delayed codes ``[B, K, T + D - 1]`` padded with ``pad_token_id``
    (``D = delay_steps(decoder)``: K, or K/2 for stereo).

    ``build_delay_pattern_mask`` expects sequences that start with the decoder start token (as in
    ``generate``), so a start column is put in front and the all-pad start column it yields is
    dropped again: the remaining columns are what ``generate`` feeds after its start token.
    """
    batch, num_codebooks, frames = codes.shape
    start = torch.full_like(codes[..., :1], pad_token_id)
    with_start = torch.cat([start, codes], dim=-1).reshape(batch * num_codebooks, frames + 1)
    # The prompt covers every frame, so the returned pattern holds no -1 ("to be generated")
    # left: it is the delayed sequence itself. (``apply_delay_pattern_mask`` is what generate
    # uses to force these pads onto its own samples; tests check our labels against it.)
    _, pattern = decoder.build_delay_pattern_mask(
        with_start, pad_token_id=pad_token_id, max_length=frames + delay_steps(decoder)
    )
    return pattern.reshape(batch, num_codebooks, -1)[..., 1:]


def delayed_labels(
    decoder: MusicgenForCausalLM,
    codes: torch.Tensor,
    padding_mask: torch.Tensor | None = None,
    pad_token_id: int | None = None,
) -> torch.Tensor:
    """Training labels ``[B, T + D - 1, K]`` (``D``: see ``delay_codes``) for the composite
    model's ``forward`` (``MusicgenForConditionalGeneration`` or its melody class).

    ``codes`` are raw codes ``[B, K, T]``; ``padding_mask`` ``[B, T]`` is True on real frames.
    Delay-pattern pads and padded frames become -100 so the loss ignores them.
    """
    pad = decoder.config.pad_token_id if pad_token_id is None else pad_token_id
    if padding_mask is not None:
        codes = codes.masked_fill(~padding_mask.bool()[:, None, :], pad)
    delayed = delay_codes(decoder, codes.long(), pad)
    labels = delayed.masked_fill(delayed == pad, IGNORE_INDEX)
    return labels.transpose(1, 2).contiguous()


def undelay_labels(labels: torch.Tensor, channels: int = 1) -> torch.Tensor:
    """Inverse of ``delayed_labels`` for unpadded items: ``[B, T + D - 1, K]`` -> ``[B, K, T]``
    (``channels=2``: stereo, codebook k delayed by k // 2)."""
    num_codebooks = labels.shape[-1]
    frames = labels.shape[1] - num_codebooks // channels + 1
    return torch.stack(
        [labels[:, k // channels : k // channels + frames, k] for k in range(num_codebooks)], dim=1
    )


def logits_for_labels(model, hidden: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor):
    """MusicGen's forward on encoder states and delayed ``labels`` ``[B, T, K]``: the output
    (its ``loss`` is the mean per-codebook cross-entropy) and the logits as ``[B, K, T, V]``.
    Training and the text-adherence score both read the model this one way."""
    from transformers.modeling_outputs import BaseModelOutput

    out = model(
        encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
        attention_mask=mask,
        labels=labels,
        use_cache=False,
    )
    k = labels.shape[-1]
    return out, out.logits.reshape(-1, k, *out.logits.shape[1:])
