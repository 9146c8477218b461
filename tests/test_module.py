"""The LightningModule on the tiny model: loss, CFG dropout, frozen T5, LoRA, EMA, checkpoints."""

import warnings

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from peft import PeftModel
from torch.utils.data import DataLoader
from transformers import MusicgenForCausalLM

from musicgen_train.config import load_config
from musicgen_train.errors import UserError
from musicgen_train.model.codec import CodecNotLoaded
from musicgen_train.model.delay import IGNORE_INDEX
from musicgen_train.model.ema import EMA
from musicgen_train.model.loader import ModelNotFoundError
from musicgen_train.training.module import MusicgenLightningModule


def make_module(*overrides: str) -> MusicgenLightningModule:
    return MusicgenLightningModule(load_config(["logger=csv", *overrides]))


def make_batch(batch_size: int = 3, frames: int = 12, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    padding_mask = torch.ones(batch_size, frames, dtype=torch.bool)
    padding_mask[-1, frames - 3 :] = False
    return {
        "texts": [f"calm piano number {i}" for i in range(batch_size)],
        "metadata": [{"genre": "jazz", "instrument": "piano", "bpm": 90}] * batch_size,
        "codes": torch.randint(0, 64, (batch_size, 4, frames), generator=g),
        "padding_mask": padding_mask,
        "keys": [f"k{i}" for i in range(batch_size)],
    }


@pytest.fixture(scope="module")
def full_module():
    module = make_module()
    module.eval()  # no dropout: the numbers below are exact
    return module


def hand_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over codebooks of mean -log p(label) over the positions that are not ignored."""
    log_probs = logits.double().log_softmax(-1)  # [B, K, T, V]
    per_codebook = []
    for k in range(labels.shape[-1]):
        target = labels[..., k]
        keep = target != IGNORE_INDEX
        picked = log_probs[:, k].gather(-1, target.clamp(min=0)[..., None])[..., 0]
        per_codebook.append(-(picked[keep]).mean())
    return torch.stack(per_codebook)


def test_codec_is_not_loaded_for_training(full_module):
    assert isinstance(full_module.model.audio_encoder, CodecNotLoaded)
    assert not list(full_module.model.audio_encoder.parameters())
    assert not [k for k in full_module.state_dict() if "audio_encoder" in k]


def test_loss_equals_per_codebook_cross_entropy_by_hand(full_module):
    batch = make_batch()
    captured = {}
    hook = full_module.model.decoder.register_forward_hook(
        lambda mod, args, out: captured.update(logits=out.logits)
    )
    try:
        result = full_module(batch)
    finally:
        hook.remove()
    labels = result["labels"]
    logits = captured["logits"].reshape(3, 4, labels.shape[1], -1)
    expected = hand_cross_entropy(logits, labels)
    assert torch.allclose(result["ce_per_codebook"].double(), expected, atol=1e-5)
    assert torch.allclose(result["loss"].double(), expected.mean(), atol=1e-5)
    # An untrained model is close to uniform over the 64 codes.
    assert abs(result["loss"].item() - np.log(64)) < 0.3


def test_cfg_dropout_blanks_exactly_the_chosen_samples(full_module):
    batch = make_batch(batch_size=4)
    drop = torch.tensor([False, True, False, True])
    seen = {}

    def spy(mod, args, kwargs):
        seen["hidden"] = kwargs["encoder_hidden_states"]
        seen["mask"] = kwargs["encoder_attention_mask"]

    hook = full_module.model.decoder.register_forward_pre_hook(spy, with_kwargs=True)
    try:
        full_module(batch, drop)
        dropped = {k: v.clone() for k, v in seen.items()}
        full_module(batch)
    finally:
        hook.remove()
    for i, is_dropped in enumerate(drop.tolist()):
        if is_dropped:
            assert (dropped["hidden"][i] == 0).all() and (dropped["mask"][i] == 0).all()
        else:
            assert torch.equal(dropped["hidden"][i], seen["hidden"][i])
            assert torch.equal(dropped["mask"][i], seen["mask"][i])
            assert dropped["hidden"][i].abs().sum() > 0


def test_cfg_dropout_rate_is_per_sample():
    module = make_module("finetune.cfg_dropout=0.3")
    drop = module.conditioning_dropout(20_000, torch.Generator().manual_seed(0))
    assert drop.dtype == torch.bool and drop.shape == (20_000,)
    assert abs(drop.float().mean().item() - 0.3) < 0.015
    none = make_module("finetune.cfg_dropout=0").conditioning_dropout(100, torch.Generator())
    assert not none.any()


def test_t5_is_frozen_and_receives_no_grad():
    module = make_module()
    module.train()
    assert not module.model.text_encoder.training  # stays in eval mode (no dropout)
    assert module.model.decoder.training
    result = module(make_batch(), torch.tensor([True, False, False]))
    result["loss"].backward()
    text_params = list(module.model.text_encoder.parameters())
    assert all(not p.requires_grad and p.grad is None for p in text_params)
    decoder_grads = [p.grad for p in module.model.decoder.parameters()]
    assert all(g is not None for g in decoder_grads)
    assert sum(g.abs().sum() for g in decoder_grads) > 0


def test_full_and_lora_trainable_parameter_counts():
    full = make_module()
    decoder_and_projection = sum(p.numel() for p in full.model.decoder.parameters()) + sum(
        p.numel() for p in full.model.enc_to_dec_proj.parameters()
    )
    assert sum(p.numel() for _, p in full.trainable_parameters()) == decoder_and_projection

    lora = make_module("finetune=lora", "finetune.lora.r=4")
    assert isinstance(lora.model.decoder, PeftModel)
    targets = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
    expected = sum(
        4 * (m.in_features + m.out_features)
        for name, m in full.model.decoder.named_modules()
        if name.rsplit(".", 1)[-1] in targets
    )
    trainable = lora.trainable_parameters()
    assert sum(p.numel() for _, p in trainable) == expected
    assert all("lora_" in name for name, _ in trainable)


def test_lora_extra_targets_heads_embeddings_and_projection():
    module = make_module(
        "finetune=lora",
        "finetune.lora.r=2",
        "finetune.lora.target_modules=[q_proj,lm_heads,embed_tokens,enc_to_dec_proj]",
    )
    names = [name for name, _ in module.trainable_parameters()]
    assert sum(".lm_heads." in n and "lora_A" in n for n in names) == 4
    assert sum(".embed_tokens." in n and "lora_embedding_A" in n for n in names) == 4
    assert "enc_to_dec_proj.weight" in names  # outside the decoder: trained fully


def test_gradient_checkpointing_gives_the_same_loss_and_grads():
    results = []
    for flag in ("false", "true"):
        module = make_module(f"finetune.gradient_checkpointing={flag}")
        module.train()  # checkpointing runs in train mode only; it replays the dropout RNG
        torch.manual_seed(0)
        loss = module(make_batch())["loss"]
        loss.backward()
        grads = torch.cat([p.grad.flatten() for _, p in module.trainable_parameters()])
        results.append((loss.detach(), grads))
    assert torch.allclose(results[0][0], results[1][0], atol=1e-6)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-5)


def test_lora_with_checkpointing_is_set_up_without_library_deprecation_warnings(tmp_path):
    """transformers 5 renamed gradient checkpointing (activation checkpointing) and warns when
    the old names are used; peft still reads the old one. A LoRA run must show neither warning
    (a user cannot act on them) and must still checkpoint."""
    from musicgen_train.model.lora import merge_saved_adapter

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = make_module("finetune=lora", "finetune.gradient_checkpointing=true")
        module.model.decoder.save_pretrained(tmp_path / "adapter")
        merged = merge_saved_adapter(make_module("finetune=full").model, tmp_path)
    future = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    assert future == []
    assert isinstance(module.model.decoder, PeftModel)
    assert any(getattr(m, "gradient_checkpointing", False) for m in module.model.modules())
    assert not isinstance(merged.decoder, PeftModel)  # the adapter was read and folded in


def test_caption_field_dropout_uses_metadata():
    module = make_module("data.caption.field_dropout=0.5")
    batch = make_batch(batch_size=64)
    texts = module.training_texts(batch, np.random.default_rng(0))
    assert len(set(texts)) > 1  # different fields dropped for different samples
    assert all(t != batch["texts"][0] for t in texts)  # rebuilt from metadata, not passed on
    off = make_module("data.caption.field_dropout=0")
    assert off.training_texts(batch, np.random.default_rng(0)) == batch["texts"]


def test_ema_math():
    weight = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    ema = EMA([("w", weight)], decay=0.9)
    with torch.no_grad():
        weight.copy_(torch.tensor([3.0, 0.0]))
    ema.update([("w", weight)])
    expected = 0.9 * torch.tensor([1.0, 2.0]) + 0.1 * torch.tensor([3.0, 0.0])
    assert torch.allclose(ema.shadow["w"], expected)
    with torch.no_grad():
        weight.copy_(torch.tensor([5.0, 5.0]))
    ema.update([("w", weight)])
    assert torch.allclose(ema.shadow["w"], 0.9 * expected + 0.1 * torch.tensor([5.0, 5.0]))
    restored = EMA([("w", weight)], decay=0.5)
    restored.load_state_dict(ema.state_dict())
    assert restored.decay == 0.9 and torch.equal(restored.shadow["w"], ema.shadow["w"])
    restored.copy_to([("w", weight)])
    assert torch.equal(weight.detach(), ema.shadow["w"])
    with pytest.raises(ValueError, match="decay"):
        EMA([("w", weight)], decay=1.0)


def fit_briefly(module, tmp_path, steps: int = 3) -> pl.Trainer:
    batches = [make_batch(seed=i) for i in range(steps)]
    loader = DataLoader(batches, batch_size=None)
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    module.on_train_batch_start(batches[0], 0)
    trainer.fit(module, train_dataloaders=loader)
    return trainer


def test_checkpoint_round_trip_with_ema_and_lora_export(tmp_path):
    module = make_module(
        "finetune=lora", "finetune.ema.decay=0.5", "optim.warmup_steps=0", "optim.lr=0.01"
    )
    trainer = fit_briefly(module, tmp_path)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=False)
    trained = dict(module.trainable_parameters())
    # Only what trains is saved (frozen weights come back from the base model) plus the EMA.
    assert {k.removeprefix("model.") for k in saved["state_dict"]} == set(trained)
    assert set(saved["ema"]["shadow"]) == set(trained)

    loaded = MusicgenLightningModule.load_from_checkpoint(path, map_location="cpu")
    for name, param in loaded.trainable_parameters():
        assert torch.equal(param, trained[name].detach()), name
    ema = {k: v.clone() for k, v in loaded.ema.shadow.items()}
    assert any(not torch.equal(ema[n], trained[n].detach()) for n in ema)

    # merge_lora=False: the decoder stays a peft model and saves its adapter alone.
    adapter = loaded.export_model(merge_lora=False, use_ema=True)
    assert isinstance(adapter.decoder, PeftModel)
    for name, param in loaded.trainable_parameters():
        assert torch.equal(param.detach(), ema[name])
    adapter.decoder.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()

    # merge_lora=True: a plain transformers model, same outputs, codec attached.
    ids = torch.full((2 * 4, 5), 3)
    hidden = torch.randn(2, 7, adapter.decoder.config.hidden_size)
    with torch.no_grad():
        before = adapter.decoder(input_ids=ids, encoder_hidden_states=hidden).logits
        merged = loaded.export_model(merge_lora=True, use_ema=True)
        after = merged.decoder(input_ids=ids, encoder_hidden_states=hidden).logits
    assert type(merged.decoder) is MusicgenForCausalLM
    assert torch.allclose(before, after, atol=1e-5)
    assert not isinstance(merged.audio_encoder, CodecNotLoaded)
    audio = merged.generate(
        input_ids=torch.ones(1, 3, dtype=torch.long),
        max_new_tokens=8,
        do_sample=False,
        guidance_scale=None,
    )
    assert audio.ndim == 3 and audio.shape[-1] > 0


def test_loading_a_checkpoint_of_another_mode_names_the_problem(tmp_path):
    module = make_module()
    trainer = fit_briefly(module, tmp_path, steps=1)
    path = tmp_path / "full.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    lora = make_module("finetune=lora")
    # One line for the CLI (a UserError, not a KeyError traceback) naming what differs.
    with pytest.raises(UserError, match="finetune.name='full' there, 'lora' here") as err:
        lora.on_load_checkpoint(checkpoint)
    assert "\n" not in str(err.value) and "leave ckpt_path out" in str(err.value)


def test_missing_base_model_is_one_clear_line():
    with pytest.raises(ModelNotFoundError) as err:
        make_module("model=facebook/musicgen-small")
    message = str(err.value)
    assert "facebook/musicgen-small" in message and "HF_HUB_OFFLINE=1" in message
    assert "\n" not in message
