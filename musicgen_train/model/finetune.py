"""Which weights of a MusicGen train: the one rule shared by training and checkpoint reading.

A training checkpoint stores only the trainable weights, named as in the model this rule makes;
the checkpoint reader rebuilds the same model from the base and the same config to load them.
"""

from __future__ import annotations

import torch
from transformers import MusicgenForConditionalGeneration

from musicgen_train.model import lora as lora_wiring


def configure_trainable(model: MusicgenForConditionalGeneration, finetune) -> None:
    """Freeze T5 and, for ``finetune.name == "lora"``, wrap the decoder with adapters (in place);
    full fine-tuning trains everything else. The codec never trains (training runs on codes)."""
    model.freeze_text_encoder()
    model.freeze_audio_encoder()
    if finetune.name == "lora":
        lora = finetune.lora
        lora_wiring.apply_lora(
            model,
            r=lora.r,
            alpha=lora.alpha,
            dropout=lora.dropout,
            target_modules=list(lora.target_modules),
        )


def trainable_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]
