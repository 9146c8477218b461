"""EnCodec latents: the encoder's continuous output BEFORE the quantiser, one frame per hop.

Any transformers ``EncodecModel`` works: ``facebook/encodec_24khz`` (75 frames/s),
``facebook/encodec_32khz`` (MusicGen's codec, 50 frames/s), ``facebook/encodec_48khz`` (stereo,
normalised, 1 s chunks), a local folder, or ``model``: the codec inside the evaluated MusicGen.
Checkpoints that work in chunks (48 kHz: 1 s chunks) are fed consecutive 1 s chunks (no
overlap, the last one as long as what is left) WITHOUT the per-chunk loudness normalisation
``EncodecModel.encode`` applies, as fadtk's ``encodec-emb-48k`` embeds (it calls the encoder on
each ``segment_length`` piece at a ``segment_length`` stride, not the codec's 0.99 s stride);
``eval.encodec.normalize_chunks=true`` scales each chunk to unit RMS instead (then fadtk's
statistics are refused). The others see the whole clip at once. A stereo codec sees stereo clips
in stereo (mono ones duplicated), as fadtk's ``convert_audio`` does; a mono codec the downmix.
"""

from __future__ import annotations

import numpy as np
import torch

from musicgen_train.audio import resample, to_channels
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
        self.normalize = bool(config.normalize and normalize_chunks and self.chunk)
        if self.chunk:
            chunking = f"consecutive {config.chunk_length_s:g} s chunks, no overlap, " + (
                "each RMS-normalised" if self.normalize else "not normalised"
            )
        else:
            chunking = "clip"
        stereo = "; stereo kept" if self.channels == 2 else ""
        self.window = (
            f"{chunking}{stereo}; one {config.hidden_size}-d pre-quantiser latent per "
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
        except Exception as err:  # a corrupt or truncated weights file (safetensors, pickle)
            raise EmbedderUnavailable(
                f"EnCodec checkpoint '{checkpoint}' cannot be loaded ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:120]}): download it again or fix "
                "eval.encodec.checkpoint"
            ) from err

    def embed(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """As ``Embedder.embed``, but to the codec's channels (stereo kept for a stereo codec)."""
        audio = to_channels(np.atleast_2d(np.asarray(audio, dtype=np.float32)), self.channels)
        audio = resample(audio, int(sample_rate), self.sample_rate)
        with torch.inference_mode():
            frames = self._encode(torch.from_numpy(np.ascontiguousarray(audio))[None])
        return np.asarray(frames, dtype=np.float32)

    def embed_mono(self, wave: np.ndarray) -> np.ndarray:
        audio = torch.from_numpy(np.ascontiguousarray(wave))[None, None]
        return self._encode(audio.repeat(1, self.channels, 1))

    def _encode(self, audio: torch.Tensor) -> np.ndarray:
        """``[1, channels, samples]`` -> ``[frames, hidden]`` latents."""
        # Too short a clip: pad it to 0.1 s (a whole clip of a few samples gives one frame).
        length = audio.shape[-1]
        audio = torch.nn.functional.pad(audio, (0, max(0, self.sample_rate // 10 - length)))
        dtype = next(self.codec.parameters()).dtype
        if self.chunk:  # fadtk: every chunk, at a stride of one chunk
            pieces = [audio[..., s : s + self.chunk] for s in range(0, audio.shape[-1], self.chunk)]
        else:
            pieces = [audio]
        latents = []
        for piece in pieces:
            if self.normalize:
                piece = piece / (
                    piece.mean(1, keepdim=True).pow(2).mean(-1, keepdim=True).sqrt() + 1e-8
                )
            latents.append(self.codec.encoder(piece.to(dtype)).float())
        return torch.cat(latents, dim=-1)[0].T.numpy()  # [frames, hidden]
