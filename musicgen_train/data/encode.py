"""Turn audio into MusicGen's tokens with the model's own EnCodec (and, for melody models, the
chroma each segment is conditioned on).

The codes are the raw EnCodec codes ``[num_codebooks, frames]`` (no delay pattern: training
applies it). Stereo checkpoints encode left and right separately and interleave the codebooks,
exactly as ``MusicgenForConditionalGeneration`` does.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

from musicgen_train.errors import UserError


class CodecEncoder:
    def __init__(self, model, model_id: str, channels: int | None = None, chroma=None):
        self.codec = model.audio_encoder.eval()
        self.model_id = str(model_id)
        self.sample_rate = int(model.config.audio_encoder.sampling_rate)
        self.hop_length = math.prod(model.config.audio_encoder.upsampling_ratios)
        self.frame_rate = self.sample_rate / self.hop_length
        self.codebook_size = int(model.config.audio_encoder.codebook_size)
        self.num_codebooks = int(model.decoder.config.num_codebooks)
        self.channels = int(model.decoder.config.audio_channels)
        # Melody models: the chroma of each segment is stored with its codes (a ChromaExtractor).
        self.chroma = chroma
        if channels is not None and int(channels) != self.channels:
            kind = "stereo" if self.channels == 2 else "mono"
            raise UserError(
                f"data.channels={channels} does not fit {model_id}, a {kind} model: "
                f"set data.channels={self.channels}"
            )
        # The codec decides how many codebooks it emits through the bandwidth it is given.
        per_channel = self.num_codebooks // self.channels
        bits = math.log2(self.codebook_size)
        self.bandwidth = per_channel * self.frame_rate * bits / 1000
        if self.bandwidth not in model.config.audio_encoder.target_bandwidths:
            self.bandwidth = model.config.audio_encoder.target_bandwidths[0]

    @classmethod
    def from_config(cls, cfg) -> CodecEncoder:
        from musicgen_train.model.families import is_melody
        from musicgen_train.sources import load_musicgen, load_options

        loaded = load_musicgen(cfg.model.id, **load_options(cfg))
        channels = cfg.data.get("channels")
        chroma = loaded.processor.chroma if is_melody(loaded.model) else None
        return cls(loaded.model, cfg.model.id, channels=channels, chroma=chroma)

    def identity(self) -> dict:
        """What a cache records to refuse codes made by another codec."""
        chroma = {"chroma": self.chroma.to_dict()} if self.chroma is not None else {}
        return {
            **chroma,
            "model_id": self.model_id,
            "sample_rate": self.sample_rate,
            "frame_rate": self.frame_rate,
            "num_codebooks": self.num_codebooks,
            "codebook_size": self.codebook_size,
            "channels": self.channels,
            "weights_sha256": self.weights_hash(),
        }

    def weights_hash(self) -> str:
        digest = hashlib.sha256()
        for name, tensor in sorted(self.codec.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    @torch.inference_mode()
    def encode(self, audio: np.ndarray) -> np.ndarray:
        """``[batch, channels, samples]`` float32 of equal lengths -> int16 ``[batch, K, T]``."""
        values = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
        per_channel = [self._encode_mono(values[:, c : c + 1]) for c in range(values.shape[1])]
        if len(per_channel) == 1:
            codes = per_channel[0]
        else:  # interleave: codebook 2k is left's k-th, 2k+1 right's k-th
            codes = torch.stack(per_channel, dim=2).flatten(1, 2)
        return codes.to(torch.int16).numpy()

    def chroma_texts(self, audio: np.ndarray) -> list[str] | None:
        """Melody models: each segment's chroma ``[batch, channels, samples]`` -> one hex digit
        per chroma frame (``model.chroma``); None for other models."""
        if self.chroma is None:
            return None
        from musicgen_train.model.chroma import chroma_to_text

        return [chroma_to_text(frames) for frames in self.chroma(audio)]

    def _encode_mono(self, values: torch.Tensor) -> torch.Tensor:
        out = self.codec.encode(values, bandwidth=self.bandwidth, return_dict=True)
        codes = out.audio_codes  # [chunks=1, batch, K, frames]
        if codes.shape[0] != 1:
            raise UserError("the model's EnCodec chunks its input: MusicGen codecs must not")
        if codes.shape[2] * self.channels != self.num_codebooks:
            raise UserError(
                f"{self.model_id}: its EnCodec gives {codes.shape[2]} codebooks per channel at "
                f"{self.bandwidth} kbps but the decoder reads {self.num_codebooks}"
            )
        return codes[0]
