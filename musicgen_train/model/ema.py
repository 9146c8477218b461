"""Exponential moving average of the trainable weights (audiocraft keeps one with decay 0.99).

After every optimizer step: ``shadow = decay * shadow + (1 - decay) * weight``. The shadow is
kept in float32 whatever the training precision, travels in the checkpoint, and replaces the
weights when the model is exported (``export_model(use_ema=True)``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class EMA:
    def __init__(self, named_params: Iterable[tuple[str, torch.Tensor]], decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie strictly between 0 and 1, got {decay}")
        self.decay = decay
        self.shadow = {name: p.detach().float().clone() for name, p in named_params}

    @torch.no_grad()
    def update(self, named_params: Iterable[tuple[str, torch.Tensor]]) -> None:
        for name, param in named_params:
            shadow = self.shadow[name]
            if shadow.device != param.device:
                shadow = self.shadow[name] = shadow.to(param.device)
            # lerp: shadow + (1 - decay) * (param - shadow)
            shadow.lerp_(param.detach().float(), 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, named_params: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Overwrite the weights with their averages."""
        for name, param in named_params:
            param.copy_(self.shadow[name].to(device=param.device, dtype=param.dtype))

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": {k: v.cpu() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) - set(state["shadow"])
        if missing:
            example = min(missing)
            raise KeyError(f"the checkpoint's EMA lacks {len(missing)} weights, e.g. {example}")
        self.decay = float(state["decay"])
        self.shadow = {k: state["shadow"][k].float().clone() for k in self.shadow}
