"""LoRA on MusicGen's decoder with peft.

The defaults follow musicgen-dreamboothing: rank 16, alpha 16 on the attention projections
(``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``: self- and cross-attention) and the feed-forward
(``fc1``, ``fc2``). Three more names may be listed:

- ``lm_heads`` and ``embed_tokens``: MusicGen keeps one head / one embedding per codebook in a
  ``ModuleList``; the name is expanded to every codebook's layer so each gets an adapter.
- ``enc_to_dec_proj``: the projection from T5 to the decoder lives outside the decoder, so it is
  trained fully (it is small: T5 width x decoder width) instead of receiving an adapter.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import MusicgenForConditionalGeneration

from musicgen_train.model.lora_targets import (  # noqa: F401 (names of this module)
    ADAPTER_DIR,
    ALLOWED_TARGETS,
    DEFAULT_TARGETS,
    OUTSIDE_DECODER,
    PER_CODEBOOK,
)


@contextlib.contextmanager
def peft_quietly() -> Iterator[None]:
    """peft (0.21) wraps a model by reading transformers' old ``is_gradient_checkpointing``,
    which transformers 5 answers with a FutureWarning on every LoRA load: their conversation,
    nothing a user can act on. Every other warning still shows."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r".*`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        yield


def decoder_target_names(decoder: nn.Module, targets: Iterable[str]) -> list[str]:
    """peft target names inside the decoder, with per-codebook lists expanded to their layers."""
    names: list[str] = []
    for target in targets:
        if target in OUTSIDE_DECODER:
            continue
        if target in PER_CODEBOOK:
            names += [
                name
                for name, module in decoder.named_modules()
                if name.rsplit(".", 2)[-2:-1] == [target] and not isinstance(module, nn.ModuleList)
            ]
        else:
            names.append(target)
    return names


def apply_lora(
    model: MusicgenForConditionalGeneration,
    *,
    r: int = 16,
    alpha: int = 16,
    dropout: float = 0.05,
    target_modules: Iterable[str] = DEFAULT_TARGETS,
) -> MusicgenForConditionalGeneration:
    """Freeze ``model`` and make only the adapters (and ``enc_to_dec_proj`` if listed) trainable.

    ``model.decoder`` becomes a ``PeftModel`` (in place), so ``model.decoder.save_pretrained``
    writes the adapter alone and ``merge_lora`` folds it back into plain linear layers.
    """
    targets = list(target_modules)
    for param in model.parameters():
        param.requires_grad_(False)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=decoder_target_names(model.decoder, targets),
        bias="none",
    )
    with peft_quietly():
        model.decoder = get_peft_model(model.decoder, config)
    projection = getattr(model, "enc_to_dec_proj", None)
    if "enc_to_dec_proj" in targets and projection is not None:
        projection.requires_grad_(True)
    return model


def has_lora(model: MusicgenForConditionalGeneration) -> bool:
    return isinstance(model.decoder, PeftModel)


def merge_lora(model: MusicgenForConditionalGeneration) -> MusicgenForConditionalGeneration:
    """Fold the adapters into the decoder's weights: a plain transformers model again."""
    if has_lora(model):
        model.decoder = model.decoder.merge_and_unload()
    return model


def merge_saved_adapter(
    model: MusicgenForConditionalGeneration, folder: str | Path
) -> MusicgenForConditionalGeneration:
    """Apply and merge the LoRA adapter an export kept apart (``adapter/``), if there is one."""
    adapter = Path(folder) / ADAPTER_DIR
    if not (adapter / "adapter_config.json").is_file():
        return model
    with peft_quietly():
        adapted = PeftModel.from_pretrained(model.decoder, str(adapter))
    model.decoder = adapted.merge_and_unload()
    return model
