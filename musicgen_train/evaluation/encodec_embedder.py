"""EnCodec latents: the encoder's continuous output BEFORE the quantiser, one frame per hop.

Any transformers ``EncodecModel`` works: ``facebook/encodec_24khz`` (75 frames/s),
``facebook/encodec_32khz`` (MusicGen's codec, 50 frames/s), ``facebook/encodec_48khz`` (stereo,
normalised, 1 s chunks), a local folder, or ``model``: the codec inside the evaluated MusicGen.
Checkpoints that work in chunks (48 kHz: 1 s chunks at a 0.99 s stride) are fed those chunks
WITHOUT the per-chunk loudness normalisation ``EncodecModel.encode`` applies, as fadtk's
``encodec-emb-48k`` embeds (it calls the encoder on each segment directly);
``eval.encodec.normalize_chunks=true`` scales each chunk to unit RMS instead (then fadtk's
statistics are refused). The others see the whole clip at once.
"""

from __future__ import annotations

import numpy as np
import torch

from musicgen_train.evaluation.embedder_base import Embedder, EmbedderUnavailable, state_dict_digest
from musicgen_train.model.hub_access import hub_kwargs


class EncodecEmbedder(Embedder):
    name = "encodec"

    def __init__(self, codec, checkpoint: str, normalize_chunks: bool = False):
        self.codec = codec.eval()
        config = codec.config
        self.checkpoint = checkpoint
        self.weights_digest = state_dict_digest(codec.encoder)
        self.sample_rate = int(config.sampling_rate)
        self.channels = int(config.audio_channels)
        self.chunk = config.chunk_length  # samples, or None: the whole clip
        self.stride = config.chunk_stride if self.chunk else None
        self.normalize = bool(config.normalize and normalize_chunks and self.chunk)
        if self.chunk:
            chunking = (
                f"{config.chunk_length_s:g} s chunks at a {self.stride / self.sample_rate:g} s "
                + ("stride, each RMS-normalised" if self.normalize else "stride, not normalised")
            )
        else:
            chunking = "clip"
        self.window = (
            f"{chunking}; one {config.hidden_size}-d pre-quantiser latent per "
            f"{1000 / config.frame_rate:g} ms frame ({config.frame_rate} frames/s)"
        )
        # fadtk's names for the statistics of the same latents.
        self.fadtk_names = {24_000: ("encodec-emb",), 48_000: ("encodec-emb-48k",)}.get(
            self.sample_rate, ()
        )
        if self.normalize:
            self.fadtk_mismatch = (
                "eval.encodec.normalize_chunks=true normalises each chunk's loudness, fadtk does "
                "not: set eval.encodec.normalize_chunks=false"
            )

    @classmethod
    def from_config(cls, encodec_cfg, *, codec=None, codec_source: str | None = None):
        checkpoint = str(encodec_cfg.get("checkpoint") or "model")
        if checkpoint == "model":
            if codec is None:
                raise EmbedderUnavailable("eval.encodec.checkpoint=model but no model was given")
            return cls(
                codec,
                checkpoint=f"{codec_source or 'model'} (its EnCodec)",
                normalize_chunks=bool(encodec_cfg.get("normalize_chunks", False)),
            )
        from transformers import EncodecModel

        try:
            model = EncodecModel.from_pretrained(checkpoint, **hub_kwargs(checkpoint))
            return cls(
                model,
                checkpoint=checkpoint,
                normalize_chunks=bool(encodec_cfg.get("normalize_chunks", False)),
            )
        except (OSError, ValueError) as err:
            raise EmbedderUnavailable(
                f"EnCodec checkpoint '{checkpoint}' is not available offline: download it once "
                "or set eval.encodec.checkpoint to a local folder or to `model`"
            ) from err

    def embed_mono(self, wave: np.ndarray) -> np.ndarray:
        # Too short a clip cannot pass the strided convolutions: pad it to 0.1 s.
        wave = np.pad(wave, (0, max(0, self.sample_rate // 10 - len(wave))))
        audio = torch.from_numpy(wave)[None, None].repeat(1, self.channels, 1)
        dtype = next(self.codec.parameters()).dtype
        if self.chunk:
            length = audio.shape[-1]
            pieces = [audio[..., s : s + self.chunk] for s in range(0, length, self.stride)]
        else:
            pieces = [audio]
        # A last chunk of a few samples cannot pass the convolutions either: drop it.
        pieces = [p for p in pieces if p.shape[-1] >= self.sample_rate // 10] or [pieces[0]]
        latents = []
        for piece in pieces:
            if self.normalize:
                piece = piece / (
                    piece.mean(1, keepdim=True).pow(2).mean(-1, keepdim=True).sqrt() + 1e-8
                )
            latents.append(self.codec.encoder(piece.to(dtype)).float())
        return torch.cat(latents, dim=-1)[0].T.numpy()  # [frames, hidden]
