"""A melody model's condition as the prefix of its decoder's input, one row at a time.

``MusicgenMelodyForConditionalGeneration`` has no cross-attention. ``generate`` builds
``encoder_hidden_states`` = the chroma frames (through ``audio_enc_to_dec_proj``, repeated or cut
to ``chroma_length``), then the text's encoder states (through ``enc_to_dec_proj``), and the
decoder reads them as the first positions of its input. For classifier-free guidance the null
row has the null chroma (bin 0 on, every frame) and zero text states of the same length. With
no melody the conditional row has the null chroma too. No attention mask is involved: the null
row attends to its zero text states as ``generate``'s does.
"""

from __future__ import annotations

import math

import torch

from musicgen_train.generation.rows import GenerationInputError
from musicgen_train.generation.text_condition import text_states


def null_chroma(frames: int, bins: int) -> torch.Tensor:
    """``[frames, bins]``: bin 0 on, as ``generate`` writes the absent melody."""
    null = torch.zeros(frames, bins)
    null[:, 0] = 1
    return null


def chroma_states(model, chroma: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The conditional and the null rows' melody states ``[chroma_length, D]`` (the model's
    dtype), ``chroma`` ``[frames, bins]`` or None (no melody)."""
    bins, length = int(model.config.num_chroma), int(model.config.chroma_length)
    projection = model.audio_enc_to_dec_proj
    weight = projection.weight
    if chroma is None:
        frames = null_chroma(1, bins)
    else:
        frames = torch.as_tensor(chroma).reshape(-1, chroma.shape[-1]).float()
        if frames.shape[-1] != bins or frames.shape[0] == 0:
            raise GenerationInputError(
                f"the melody's chroma must be [frames, {bins}] with frames > 0, "
                f"not {list(chroma.shape)}"
            )
    pair = torch.stack([frames, null_chroma(frames.shape[0], bins)])  # [2, frames, bins]
    if chroma is None:
        pair[0] = pair[1]
    pair = pair.to(device=weight.device, dtype=weight.dtype)
    states = projection(pair) if bins != model.config.decoder.hidden_size else pair
    if states.shape[1] < length:
        states = states.repeat(1, math.ceil(length / states.shape[1]), 1)
    states = states[:, :length]
    return states[0], states[1]


def prefix_states(loop, prompt: str, chroma: torch.Tensor | None) -> tuple:
    """``(conditional, null)``, each ``[P, D]`` in the decoder's dtype: melody states, then the
    prompt's text states (the null row's are zero)."""
    text = text_states(loop, prompt)[0]  # [T, D]
    melody, null_melody = chroma_states(loop.model, chroma)
    melody = melody.to(device=text.device, dtype=text.dtype)
    null_melody = null_melody.to(device=text.device, dtype=text.dtype)
    return torch.cat([melody, text]), torch.cat([null_melody, torch.zeros_like(text)])
