"""Chroma features of audio, as MusicGen-melody is conditioned on, and the melody processor.

``ChromaExtractor`` computes what transformers' ``MusicgenMelodyFeatureExtractor`` computes (its
settings come from the same ``preprocessor_config.json``): the power spectrogram (Hann window of
``n_fft``, hop ``hop_length``, centred), summed through librosa's chroma filter bank (transformers'
``audio_utils.chroma_filter_bank``), and each frame reduced to a one-hot vector on its strongest
pitch class. That extractor needs torchaudio only for its spectrogram, and torchaudio is not
published for every torch release, so the spectrogram is ``torch.stft`` here. The spectrogram's
normalisation is a constant factor, which the per-frame argmax ignores: the features are the same.

Because every frame is one-hot, a segment's chroma is stored in the token cache as one
hexadecimal digit per frame (``chroma_to_text`` / ``chroma_from_text``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

FEATURE_FILE = "preprocessor_config.json"


@dataclass(frozen=True)
class ChromaExtractor:
    sampling_rate: int = 32_000
    n_fft: int = 16_384
    hop_length: int = 4096
    num_chroma: int = 12
    chunk_length: int = 30  # seconds; longer audio is cut

    @classmethod
    def from_pretrained(cls, path: str | Path, **hub) -> ChromaExtractor:
        local = Path(str(path)) / FEATURE_FILE
        if local.exists():
            values = json.loads(local.read_text())
        else:
            from huggingface_hub import hf_hub_download

            values = json.loads(Path(hf_hub_download(str(path), FEATURE_FILE, **hub)).read_text())
        names = cls.__dataclass_fields__
        return cls(**{k: int(v) for k, v in values.items() if k in names})

    def to_dict(self) -> dict:
        """The ``preprocessor_config.json`` transformers' melody processor reads."""
        return {
            "feature_extractor_type": "MusicgenMelodyFeatureExtractor",
            "processor_class": "MusicgenMelodyProcessor",
            "feature_size": self.num_chroma,
            "sampling_rate": self.sampling_rate,
            "hop_length": self.hop_length,
            "chunk_length": self.chunk_length,
            "n_fft": self.n_fft,
            "num_chroma": self.num_chroma,
            "padding_value": 0.0,
            "padding_side": "right",
            "return_attention_mask": False,
            "stem_indices": [3, 2],
        }

    @property
    def frame_rate(self) -> float:
        return self.sampling_rate / self.hop_length

    def frames(self, samples: int) -> int:
        """Chroma frames of ``samples`` samples (centred STFT: one per hop, plus one)."""
        samples = min(max(samples, self.n_fft), self.chunk_length * self.sampling_rate)
        return samples // self.hop_length + 1

    @torch.no_grad()
    def __call__(self, audio) -> torch.Tensor:
        """Audio ``[samples]``, ``[batch, samples]`` or ``[batch, channels, samples]`` (channels
        are averaged) at ``sampling_rate`` -> float32 one-hot chroma ``[batch, frames, 12]``."""
        wave = torch.as_tensor(np.asarray(audio, dtype=np.float32))
        if wave.ndim == 1:
            wave = wave[None]
        if wave.ndim == 3:
            wave = wave.mean(dim=1)
        wave = wave[:, : self.chunk_length * self.sampling_rate]
        if wave.shape[-1] < self.n_fft:  # as transformers: centre short audio in zeros
            pad = self.n_fft - wave.shape[-1]
            wave = torch.nn.functional.pad(wave, (pad // 2, pad - pad // 2))
        window = torch.hann_window(self.n_fft)
        spec = (
            torch.stft(
                wave, self.n_fft, self.hop_length, window=window, center=True, return_complex=True
            ).abs()
            ** 2
        )  # [batch, freq, frames]
        raw = torch.einsum("cf,bft->btc", self.filters(), spec)
        onehot = torch.zeros_like(raw)
        onehot.scatter_(-1, raw.argmax(-1, keepdim=True), 1.0)
        return onehot

    def filters(self) -> torch.Tensor:
        from transformers.audio_utils import chroma_filter_bank

        bank = chroma_filter_bank(
            sampling_rate=self.sampling_rate,
            num_frequency_bins=self.n_fft,
            tuning=0,
            num_chroma=self.num_chroma,
        )
        return torch.from_numpy(bank).float()

    def null(self, batch: int, frames: int) -> torch.Tensor:
        """The null (unconditional) chroma ``generate`` uses: every frame on pitch class 0."""
        features = torch.zeros(batch, frames, self.num_chroma)
        features[..., 0] = 1.0
        return features


def chroma_to_text(onehot: torch.Tensor | np.ndarray) -> str:
    """One segment's one-hot chroma ``[frames, 12]`` -> one hex digit per frame."""
    return "".join(f"{int(i):x}" for i in np.asarray(onehot).argmax(-1))


def chroma_from_text(text: str, num_chroma: int = 12) -> torch.Tensor:
    """Inverse of ``chroma_to_text``: float32 ``[frames, num_chroma]``."""
    index = torch.tensor([int(c, 16) for c in text], dtype=torch.long)
    return torch.nn.functional.one_hot(index, num_chroma).float()


class MelodyProcessor:
    """Tokenizer and chroma extractor of a melody folder, called like transformers' processor:
    ``processor(text=[...], audio=..., sampling_rate=..., padding=True, return_tensors="pt")``
    gives ``input_ids``, ``attention_mask`` and (with audio) ``input_features``."""

    def __init__(self, tokenizer, chroma: ChromaExtractor):
        self.tokenizer = tokenizer
        self.feature_extractor = chroma
        self.chroma = chroma

    @classmethod
    def from_pretrained(cls, path: str, **hub) -> MelodyProcessor:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path, **hub)
        return cls(tokenizer, ChromaExtractor.from_pretrained(path, **hub))

    def __call__(self, text=None, audio=None, sampling_rate=None, **kwargs) -> dict:
        out = {}
        if text is not None:
            kwargs.setdefault("return_tensors", "pt")
            out.update(self.tokenizer(text, **kwargs))
        if audio is not None:
            if sampling_rate is not None and int(sampling_rate) != self.chroma.sampling_rate:
                from musicgen_train.audio import resample

                rate = self.chroma.sampling_rate
                audio = resample(np.atleast_2d(audio), int(sampling_rate), rate)
            out["input_features"] = self.chroma(audio)
        return out

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(folder)
        text = json.dumps(self.chroma.to_dict(), indent=2, sort_keys=True) + "\n"
        (folder / FEATURE_FILE).write_text(text)
