"""Tiny embedder models with random weights, saved the way real ones are (evaluation tests)."""

from pathlib import Path

import numpy as np
import torch


def tiny_clap_tokenizer():
    """A byte-level BPE tokenizer built offline, in the layout of CLAP's RoBERTa tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import RobertaTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(
        ["calm piano", "loud drums", "jazz saxophone", "ambient pad"], trainer
    )
    tokenizer.post_processor = processors.RobertaProcessing(
        ("</s>", tokenizer.token_to_id("</s>")), ("<s>", tokenizer.token_to_id("<s>"))
    )
    return RobertaTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        cls_token="<s>",
        sep_token="</s>",
    )


def build_tiny_clap(seed: int = 0, enable_fusion: bool = False):
    from transformers import (
        ClapAudioConfig,
        ClapConfig,
        ClapFeatureExtractor,
        ClapModel,
        ClapProcessor,
        ClapTextConfig,
    )

    tokenizer = tiny_clap_tokenizer()
    text = ClapTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=0,
        eos_token_id=2,
    )
    # spec_size 256 is what CLAP's 1001x64 mel input needs; everything else is shrunk.
    audio = ClapAudioConfig(
        spec_size=256,
        patch_embeds_hidden_size=16,
        depths=[1, 1],
        num_attention_heads=[2, 2],
        window_size=4,
        hidden_size=32,
        enable_fusion=enable_fusion,
    )
    config = ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=16)
    torch.manual_seed(seed)
    model = ClapModel(config).eval()
    processor = ClapProcessor(feature_extractor=ClapFeatureExtractor(), tokenizer=tokenizer)
    return model, processor


def save_tiny_clap(folder: Path, seed: int = 0, enable_fusion: bool = False) -> Path:
    model, processor = build_tiny_clap(seed, enable_fusion)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def save_tiny_vggish(path: Path, seed: int = 0) -> Path:
    from musicgen_train.evaluation.vggish import VGGish

    torch.manual_seed(seed)
    model = VGGish(channels=(4, 8, 8, 8, 16, 16), hidden=32, embedding=128)
    torch.save(model.state_dict(), path)
    return path


def save_tiny_encodec(folder: Path, sample_rate: int = 24_000, seed: int = 0) -> Path:
    from transformers import EncodecConfig, EncodecModel

    config = EncodecConfig(
        sampling_rate=sample_rate,
        audio_channels=1,
        hidden_size=16,
        num_filters=4,
        num_residual_layers=1,
        upsampling_ratios=[8, 5, 4, 2],
        num_lstm_layers=1,
        codebook_size=32,
        codebook_dim=16,
        target_bandwidths=[1.5],
    )
    torch.manual_seed(seed)
    EncodecModel(config).save_pretrained(folder)
    return folder


def tone(seconds: float, rate: int, hertz: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amplitude * np.sin(2 * np.pi * hertz * t)).astype(np.float32)[None]
