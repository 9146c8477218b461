"""The prompt ``""`` means the null (unconditional) condition, as training defines it.

Training blanks a caption for classifier-free guidance by ZEROING its T5 hidden states and its
attention mask (``MusicgenLightningModule.encode_text`` with ``drop``); transformers' ``generate``
builds its unconditional half the same way (``zeros_like``). T5's encoding of the empty string is
not that: it is the encoding of a lone end-of-sequence token, a condition the model never saw in
training (measured on the demo: cross-entropy 2.469 with ``""`` against 2.180 with the null
condition). So an empty (or all-whitespace) prompt is mapped to zeros here:

- ``null_rows(prompts)``: which rows are empty;
- ``zero_null_rows(hidden, mask, rows)``: training's blanking, for code that encodes text itself;
- ``null_condition(model, prompts, inputs)``: a context manager for ``model.generate``: it zeroes
  the attention mask of empty rows in ``inputs`` and, through a forward hook on the text
  encoder, their hidden states. Use it around every ``generate`` call of the engine::

      inputs = processor(text=prompts, padding=True, return_tensors="pt")
      with null_condition(model, prompts, inputs):
          audio = model.generate(**inputs, ...)
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


def null_rows(prompts: list[str]) -> torch.Tensor:
    """``[batch]`` bool: True where the prompt is empty (the null condition)."""
    return torch.tensor([not str(p).strip() for p in prompts], dtype=torch.bool)


def zero_null_rows(
    hidden: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training's blanking: hidden states and attention mask of ``rows`` set to zero."""
    if not rows.any():
        return hidden, mask
    keep = ~rows.to(hidden.device)
    return hidden * keep[:, None, None].to(hidden.dtype), mask * keep[:, None].to(mask.dtype)


@contextmanager
def null_condition(model, prompts: list[str], inputs: dict):
    """Within the block, ``model.generate(**inputs)`` sees empty prompts as the null condition.

    ``inputs["attention_mask"]`` is changed in place; the hook is removed on exit.
    """
    rows = null_rows(prompts)
    if not rows.any():
        yield inputs
        return
    if "attention_mask" in inputs:
        mask = inputs["attention_mask"]
        inputs["attention_mask"] = mask * (~rows.to(mask.device))[:, None].to(mask.dtype)

    def blank(_module, _args, output):
        hidden = output.last_hidden_state
        if hidden.shape[0] != rows.shape[0]:  # not this batch's encoding: leave it alone
            return output
        keep = (~rows.to(hidden.device))[:, None, None].to(hidden.dtype)
        output.last_hidden_state = hidden * keep
        return output

    handle = model.text_encoder.register_forward_hook(blank)
    try:
        yield inputs
    finally:
        handle.remove()
