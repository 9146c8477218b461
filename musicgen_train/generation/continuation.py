"""An audio prompt -> the codec codes a row continues, as transformers' ``generate`` makes them.

``generate(**processor(audio=..., text=...))`` encodes ``input_values`` with the model's EnCodec
(``_prepare_audio_encoder_kwargs_for_generation``: one ``encode`` per channel for stereo models,
the left and right codebooks interleaved) and uses the codes as ``decoder_input_ids``; the delay
pattern then forces them. ``prompt_codes`` is that encoding; ``DecodeLoop.add_row(prefix=...)``
does the forcing.
"""

from __future__ import annotations

import numpy as np
import torch

from musicgen_train.generation.rows import GenerationInputError


def as_prompt_audio(audio, channels: int) -> torch.Tensor:
    """``[channels, samples]`` (or ``[samples]`` for mono) float audio -> ``[1, channels, S]``."""
    tensor = torch.as_tensor(np.asarray(audio, dtype=np.float32))
    if tensor.dim() == 1:
        tensor = tensor[None]
    if tensor.dim() != 2 or tensor.shape[0] != channels:
        raise GenerationInputError(
            f"audio_prompt must be float audio [{channels}, samples] at the model's rate, "
            f"got shape {tuple(tensor.shape)}"
        )
    if tensor.shape[1] == 0:
        raise GenerationInputError("audio_prompt is empty (0 samples)")
    return tensor[None]


@torch.inference_mode()
def prompt_codes(model, audio) -> torch.Tensor:
    """The codes ``[K, frames]`` (long, CPU) of one audio prompt, codebooks as the decoder
    orders them (stereo: left and right interleaved)."""
    stereo = model.config.decoder.audio_channels == 2
    values = as_prompt_audio(audio, 2 if stereo else 1)
    codec = model.audio_encoder
    device = next(codec.parameters()).device
    values = values.to(device=device, dtype=next(codec.parameters()).dtype)
    mask = torch.ones(values.shape[0], values.shape[-1], dtype=torch.long, device=device)

    def encode(x: torch.Tensor) -> torch.Tensor:
        out = codec.encode(input_values=x, padding_mask=mask, return_dict=True)
        codes = out.audio_codes  # [chunks=1, 1, K, frames]
        if codes.shape[0] != 1:
            raise GenerationInputError("the codec encodes in chunks; continuation needs one")
        return codes[0, 0]

    if not stereo:
        return encode(values).cpu()
    left, right = encode(values[:, :1]), encode(values[:, 1:])
    codes = left.new_empty((2 * left.shape[0], left.shape[1]))
    codes[::2], codes[1::2] = left, right
    return codes.cpu()
