"""The inputs of a melody model's forward: tokenised captions and chroma, with dropout applied."""

from __future__ import annotations

import torch


def null_chroma_like(chroma: torch.Tensor) -> torch.Tensor:
    """The null condition ``generate`` uses for "no melody": every frame on pitch class 0."""
    null = torch.zeros_like(chroma)
    null[..., 0] = 1.0
    return null


def melody_inputs(module, batch: dict, drop=None, drop_chroma=None) -> dict:
    """``input_ids``, ``attention_mask`` (zero on dropped captions) and ``input_features`` (the
    batch's chroma, null where dropped; absent: transformers' null chroma) for ``module.model``."""
    tokens = module.tokenizer(
        list(batch["texts"]),
        padding=True,
        truncation=True,
        max_length=int(module.cfg.finetune.max_text_tokens),
        return_tensors="pt",
    ).to(module.device)
    mask = tokens.attention_mask
    inputs = {"input_ids": tokens.input_ids, "attention_mask": mask}
    if drop is not None and drop.any():
        inputs["attention_mask"] = mask * (~drop.to(mask.device))[:, None].to(mask.dtype)
    chroma = batch.get("chroma")
    if chroma is not None:
        chroma = chroma.to(module.device, dtype=module.model.dtype)
        blank = torch.zeros(chroma.shape[0], dtype=torch.bool)
        for rows in (drop, drop_chroma):
            if rows is not None:
                blank = blank | rows.cpu()
        if blank.any():
            rows = blank.to(chroma.device)[:, None, None]
            chroma = torch.where(rows, null_chroma_like(chroma), chroma)
        inputs["input_features"] = chroma
    return inputs


def quiet_full_length_chroma_warning() -> None:
    """transformers warns on every forward whose chroma is exactly ``chroma_length`` frames long
    (30 s segments always are) although nothing is cut: keep that one logger to errors."""
    from transformers.utils import logging as hf_logging

    name = "transformers.models.musicgen_melody.modeling_musicgen_melody"
    hf_logging.get_logger(name).setLevel(hf_logging.ERROR)
