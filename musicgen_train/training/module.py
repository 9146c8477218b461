"""The LightningModule: transformers' MusicGen trained on cached EnCodec codes.

One training step: captions -> frozen T5 (no grad) -> some captions blanked for classifier-free
guidance -> codes delayed into labels -> ``MusicgenForConditionalGeneration.forward(labels=...)``,
whose loss is the mean over codebooks of the per-codebook cross-entropy. The codec is never
loaded for training; it is attached only to decode samples and at export.

Stereo models train the same way on 8 interleaved codebooks (the delay pattern knows the pairs).
Melody models also get each segment's chroma (``batch["chroma"]``, from the token cache) as
``input_features``; classifier-free dropout blanks caption and chroma together (the null
condition ``generate`` uses), and ``finetune.chroma_dropout`` drops the chroma alone.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

from musicgen_train.model import lora as lora_wiring
from musicgen_train.model.codec import has_codec
from musicgen_train.model.delay import IGNORE_INDEX, delayed_labels, logits_for_labels
from musicgen_train.model.ema import EMA
from musicgen_train.model.families import is_melody
from musicgen_train.model.finetune import configure_trainable, trainable_parameters
from musicgen_train.sources import attach_codec, load_codec, load_options, load_without_codec
from musicgen_train.training.divergence import (
    check_finite_weights,
    check_gradients,
    clip_gradients,
)


def step_seed(seed: int, *parts: int) -> int:
    """A seed that depends only on ``seed`` and where training is (epoch, batch, rank)."""
    text = ",".join(str(int(p)) for p in (seed, *parts))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def codebook_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per codebook ``[K]``: logits ``[B, K, T, V]``, labels ``[B, T, K]``."""
    return torch.stack(
        [
            F.cross_entropy(
                logits[:, k].flatten(0, 1).float(),
                labels[..., k].flatten(),
                ignore_index=IGNORE_INDEX,
            )
            for k in range(logits.shape[1])
        ]
    )


class MusicgenLightningModule(pl.LightningModule):
    """``cfg`` is the full resolved config (a DictConfig or the plain dict saved as hparams)."""

    def __init__(self, cfg: DictConfig | dict):
        super().__init__()
        plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
        self.save_hyperparameters({"cfg": plain})
        self.cfg = OmegaConf.create(plain)
        loaded = load_without_codec(self.cfg.model.id, **load_options(self.cfg))
        self.model = loaded.model
        self.processor = loaded.processor
        self.model_path = loaded.path
        self.melody = is_melody(self.model)  # conditioned on chroma too
        # The codec, loaded on first use by samples; a dict so that nn.Module does not register
        # it as a submodule (it must stay out of the state dict and the checkpoints).
        self._codec_cache: dict = {}
        self._configure_trainable()
        # from_pretrained returns eval mode and Lightning keeps the mode it finds: train mode
        # (dropout on) for the decoder, eval mode for the frozen T5 (see ``train``).
        self.train()
        ema_decay = float(self.cfg.finetune.ema.decay or 0.0)
        self.ema = EMA(self.trainable_parameters(), ema_decay) if ema_decay > 0 else None

    # --- what trains ---------------------------------------------------------------------------

    def _configure_trainable(self) -> None:
        ft = self.cfg.finetune
        configure_trainable(self.model, ft)  # the rule the checkpoint reader rebuilds with
        if ft.gradient_checkpointing:
            # Non-reentrant checkpointing works when only adapters require grad (LoRA).
            decoder = self.model.decoder
            if hasattr(decoder, "activation_checkpointing_enable"):  # transformers >= 5.x's name
                decoder.activation_checkpointing_enable(
                    activation_checkpointing_kwargs={"use_reentrant": False}
                )
            else:
                decoder.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs={"use_reentrant": False}
                )

    def trainable_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return trainable_parameters(self.model)

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.text_encoder.eval()  # frozen: no dropout in T5 either
        return self

    # --- one step --------------------------------------------------------------------------------

    @property
    def tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)

    def encode_text(
        self, texts: list[str], drop: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """T5 hidden states and mask; rows in ``drop`` are blanked as generate's null condition."""
        tokens = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=int(self.cfg.finetune.max_text_tokens),
            return_tensors="pt",
        ).to(self.device)
        with torch.no_grad():
            hidden = self.model.text_encoder(
                input_ids=tokens.input_ids, attention_mask=tokens.attention_mask
            ).last_hidden_state
        mask = tokens.attention_mask
        if drop is not None and drop.any():
            keep = ~drop.to(self.device)
            hidden = hidden * keep[:, None, None].to(hidden.dtype)
            mask = mask * keep[:, None].to(mask.dtype)
        return hidden, mask

    def forward(
        self,
        batch: dict,
        drop: torch.Tensor | None = None,
        drop_chroma: torch.Tensor | None = None,
    ) -> dict:
        """Loss (what backward uses), per-codebook cross-entropy and labels of one batch.
        ``drop``: rows whose condition is blanked (caption, and chroma for melody models);
        ``drop_chroma``: melody rows whose chroma alone is blanked."""
        labels = delayed_labels(self.model.decoder, batch["codes"], batch.get("padding_mask"))
        if self.melody:
            out = self._melody_forward(batch, labels, drop, drop_chroma)
            # Melody models return logits for their conditioning prefix too: the last frames.
            logits = out.logits[:, -labels.shape[1] :]
            logits = logits.reshape(-1, labels.shape[-1], *logits.shape[1:])
        else:
            hidden, mask = self.encode_text(batch["texts"], drop)
            out, logits = logits_for_labels(self.model, hidden, mask, labels)
        with torch.no_grad():
            per_codebook = codebook_cross_entropy(logits.detach(), labels)
        return {"loss": out.loss, "ce_per_codebook": per_codebook, "labels": labels}

    def _melody_forward(self, batch, labels, drop, drop_chroma):
        """transformers' melody forward: T5 (frozen, eval) on the captions, the chroma projected
        and prepended. A blanked caption has a zero attention mask (its states become zeros, as
        in generate's null half); a blanked chroma is the null chroma (pitch class 0)."""
        from musicgen_train.training.melody import melody_inputs, quiet_full_length_chroma_warning

        quiet_full_length_chroma_warning()

        inputs = melody_inputs(self, batch, drop, drop_chroma)
        return self.model(**inputs, labels=labels, use_cache=False)

    def conditioning_dropout(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Which samples lose their caption (per sample, probability ``finetune.cfg_dropout``)."""
        p = float(self.cfg.finetune.cfg_dropout)
        return torch.rand(batch_size, generator=generator) < p

    def training_texts(self, batch: dict, rng: np.random.Generator) -> list[str]:
        """Captions rebuilt with random field dropout when ``data.caption.field_dropout > 0``."""
        caption_cfg = OmegaConf.select(self.cfg, "data.caption")
        if not caption_cfg or not float(caption_cfg.get("field_dropout") or 0.0):
            return list(batch["texts"])
        if not batch.get("metadata"):
            return list(batch["texts"])
        from musicgen_train.data.captions import build_caption

        plain = OmegaConf.to_container(caption_cfg, resolve=True)
        return [
            build_caption(meta, plain, rng) if meta else text
            for meta, text in zip(batch["metadata"], batch["texts"], strict=True)
        ]

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # Every random draw of a step (dropout, CFG and caption dropout) comes from a seed fixed
        # by where training is: a resumed run draws exactly what an uninterrupted one draws.
        # Keyed on the batch count across epochs, which the checkpoint stores, not on the epoch:
        # a checkpoint on an epoch's last batch resumes with ``current_epoch`` one ahead.
        seed = step_seed(self.cfg.seed, self.batches_seen(), self.global_rank)
        torch.manual_seed(seed)
        self._step_generator = torch.Generator().manual_seed(seed)
        self._step_rng = np.random.default_rng(seed)

    def batches_seen(self) -> int:
        """Training batches started before this one, over all epochs (Lightning's loop counter,
        saved in every checkpoint; a batch a kill interrupted is counted again on resume)."""
        trainer = self._trainer  # (None when called outside a fit)
        return int(trainer.fit_loop.epoch_loop.total_batch_idx) if trainer is not None else 0

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        batch = {**batch, "texts": self.training_texts(batch, self._step_rng)}
        drop = self.conditioning_dropout(len(batch["texts"]), self._step_generator)
        drop_chroma = None
        if self.melody:
            p = float(OmegaConf.select(self.cfg, "finetune.chroma_dropout", default=0.0) or 0.0)
            drop_chroma = torch.rand(len(batch["texts"]), generator=self._step_generator) < p
            self.log("train/chroma_dropped", (drop | drop_chroma).float().mean(), on_step=True)
        result = self(batch, drop, drop_chroma)
        self._log_losses("train", result, len(batch["texts"]))
        self.log("train/cfg_dropped", drop.float().mean(), on_step=True, on_epoch=False)
        return result["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        result = self(batch)  # validation measures the conditional loss: nothing dropped
        self._log_losses("val", result, len(batch["texts"]))
        self._log_text_adherence(batch, batch_idx, result["loss"].detach())

    # --- text adherence (issue 15): does the model use its captions? -------------------------

    def _log_text_adherence(self, batch: dict, batch_idx: int, ce_true: torch.Tensor) -> None:
        """``val/ce_shuffled`` (captions deranged across the batch: no clip keeps its own),
        ``val/ce_null`` (training's blanked condition) and ``val/caption_gain`` = shuffled - true.
        A batch of one clip has nobody to swap with: it logs none of them."""
        texts = list(batch["texts"])
        if len(texts) < 2 or not OmegaConf.select(
            self.cfg, "finetune.text_adherence", default=True
        ):
            return
        from musicgen_train.evaluation.text_adherence import derangement

        rng = np.random.default_rng(step_seed(self.cfg.seed, batch_idx, self.global_rank))
        shuffled = [texts[i] for i in derangement(texts, rng)]
        ce_shuffled = self({**batch, "texts": shuffled})["loss"].detach()
        ce_null = self(batch, torch.ones(len(texts), dtype=torch.bool))["loss"].detach()
        options = {"on_step": False, "on_epoch": True, "batch_size": len(texts), "sync_dist": True}
        self.log("val/ce_shuffled", ce_shuffled, **options)
        self.log("val/ce_null", ce_null, **options)
        self.log("val/caption_gain", ce_shuffled - ce_true, **options)

    def _log_losses(self, stage: str, result: dict, batch_size: int) -> None:
        train = stage == "train"
        options = {
            "on_step": train,
            "on_epoch": not train,
            "batch_size": batch_size,
            "sync_dist": not train,
        }
        ce = result["loss"].detach()
        self.log(f"{stage}/ce", ce, prog_bar=True, **options)
        self.log(f"{stage}/ppl", torch.exp(ce), **options)
        for k, value in enumerate(result["ce_per_codebook"]):
            self.log(f"{stage}/ce_q{k}", value, **options)

    # --- optimizer ---------------------------------------------------------------------------

    def configure_optimizers(self):
        opt = self.cfg.optim
        params = [p for _, p in self.trainable_parameters()]
        # Weight decay on matrices only: biases, norms' gains and 1-d tensors are left alone.
        groups = [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": opt.weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(
            [g for g in groups if g["params"]], lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(int(opt.warmup_steps), total)
        if opt.scheduler == "constant":
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: min(1.0, (step + 1) / max(1, warmup))
            )
        else:
            scheduler = get_cosine_with_min_lr_schedule_with_warmup(
                optimizer, warmup, total, min_lr_rate=float(opt.min_lr_ratio)
            )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"},
        }

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        # The global gradient norm before clipping (clipping computes it anyway), on the
        # dashboards as train/grad_norm; a non-finite one stops before the optimizer step.
        norm = clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)
        if norm is not None:
            self.log("train/grad_norm", norm.detach(), on_step=True, on_epoch=False)
            check_gradients(self.trainer, self, norm)

    def on_before_zero_grad(self, optimizer) -> None:
        # Called right after each optimizer step (once per accumulated batch group).
        if self.ema is not None:
            self.ema.update(self.trainable_parameters())

    # --- checkpoints ---------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Frozen weights are left out (T5, LoRA's base): they come back from the base model.
        trainable = {name for name, _ in self.trainable_parameters()}
        state = checkpoint.get("state_dict")
        if state is not None:
            checkpoint["state_dict"] = {
                k: v for k, v in state.items() if k.removeprefix("model.") in trainable
            }
            if self._trainer is not None:  # (a module saved outside a fit is not checked)
                check_finite_weights(checkpoint["state_dict"], self.trainer, self)
        if self.ema is not None:
            checkpoint["ema"] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        from musicgen_train.training import resume

        if "state_dict" not in checkpoint:  # DeepSpeed's engine has loaded the weights itself
            return resume.restore_ema(self, checkpoint)
        # A checkpoint of another model or trainable set: one line, before anything is loaded.
        resume.check_fits(self, checkpoint, getattr(self._trainer, "ckpt_path", None))
        state = checkpoint.setdefault("state_dict", {})
        # The frozen weights left out at saving are those this module loaded from the base
        # model: put them back so the state dict loads strictly.
        for key, value in self.state_dict().items():
            state.setdefault(key, value)
        resume.restore_ema(self, checkpoint)

    def on_train_start(self) -> None:
        # A resumed run given other optim.* values: Lightning has just restored AdamW and the
        # scheduler with the checkpoint's; this run's own are put in (and said).
        from musicgen_train.training.resume import apply_optim_settings

        apply_optim_settings(self.trainer, self.cfg)

    # --- samples and export ----------------------------------------------------------------

    @contextmanager
    def codec_attached(self):
        """The model with its real codec for as long as the block runs (samples need audio)."""
        if "codec" not in self._codec_cache:
            self._codec_cache["codec"] = load_codec(self.cfg.model.id, **load_options(self.cfg))
        stand_in = self.model.audio_encoder
        self.model.audio_encoder = self._codec_cache["codec"].to(self.device)
        try:
            yield self.model
        finally:
            self.model.audio_encoder = stand_in

    def export_model(self, merge_lora: bool = True, use_ema: bool = True):
        """A plain ``MusicgenForConditionalGeneration`` with EMA weights and LoRA merged.

        Works in place on this module's model (one copy of the weights in memory); load the
        checkpoint again to keep training. ``merge_lora=False`` keeps the decoder a peft model
        whose ``save_pretrained`` writes the adapter alone.
        """
        if use_ema and self.ema is not None:
            self.ema.copy_to(self.trainable_parameters())
        model = lora_wiring.merge_lora(self.model) if merge_lora else self.model
        if not has_codec(model):
            attach_codec(model, self.cfg.model.id, **load_options(self.cfg))
        self.model = model
        return model.eval()
