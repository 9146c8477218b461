"""The engine against transformers' ``generate``: the same tokens to the bit, the same audio up
to float rounding. The engine decodes through ``FastCodecDecoder`` (the codec's own modules,
weight norm folded once, transposed convolutions as one matmul): the same arithmetic summed in
another order, so with several threads a sample may differ in its last bit (measured 1.2e-7)."""

from __future__ import annotations

import numpy as np
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

AUDIO_ATOL = 1e-6  # float rounding of the codec; a different token moves samples far more


class TokenRecorder(StoppingCriteria):
    """Keeps the ``input_ids`` of the newest step (``[batch * codebooks, length]``, as
    ``generate`` holds them; the engine hands its rows over in the same layout). Never stops."""

    def __init__(self):
        self.ids: torch.Tensor | None = None

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        self.ids = input_ids.detach().clone()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def recorder() -> tuple[TokenRecorder, StoppingCriteriaList]:
    record = TokenRecorder()
    return record, StoppingCriteriaList([record])


def assert_same_generation(ours, theirs, ours_ids=None, theirs_ids=None) -> None:
    """Equal tokens (when recorded) and audio equal up to the codec's float rounding."""
    if ours_ids is not None or theirs_ids is not None:
        assert ours_ids is not None and theirs_ids is not None
        width = min(ours_ids.shape[-1], theirs_ids.shape[-1])
        assert ours_ids.shape[0] == theirs_ids.shape[0]
        torch.testing.assert_close(ours_ids[:, :width], theirs_ids[:, :width], rtol=0, atol=0)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=AUDIO_ATOL)
