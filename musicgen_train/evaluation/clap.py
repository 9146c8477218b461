"""LAION CLAP audio and text embeddings through transformers' ``ClapModel`` / ``ClapProcessor``.

Deterministic windowing: CLAP's feature extractor crops audio longer than 10 s at RANDOM, and
for fusion checkpoints it marks a random clip as "longer" when none is. We never let it choose:
no window is ever longer than the model's input, and ``is_longer`` is always False. The same file
always gives the same embedding. Two windowings (``eval.clap.windowing``):

- ``consecutive`` (default; the CLAP score): consecutive windows of ``window_seconds``, the last,
  shorter one repeat-padded by the extractor (as CLAP was trained).
- ``fadtk`` (fadtk 1.1.0's ``clap-laion-music``): the clip quantised to int16 and back
  (clip to [-1, 1], x 32767, truncated, / 32767), then a 10 s window starting at EVERY second
  to the end of the clip, each zero-padded to 10 s. Only these embeddings may be compared with
  fadtk's CLAP statistics.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from musicgen_train.evaluation.embedder_base import Embedder, EmbedderUnavailable, state_dict_digest
from musicgen_train.model.hub_access import hub_kwargs, hub_offline

log = logging.getLogger(__name__)


WINDOWINGS = ("consecutive", "fadtk")


def int16_round_trip(wave: np.ndarray) -> np.ndarray:
    """fadtk's quantisation: clip to [-1, 1], scale by 32767, truncate to int16, scale back."""
    quantised = (np.clip(wave, -1.0, 1.0) * 32767.0).astype(np.int16)
    return (quantised / 32767.0).astype(np.float32)


def fadtk_windows(wave: np.ndarray, size: int, hop: int) -> list[np.ndarray]:
    """``size``-sample windows starting every ``hop`` samples up to the end, zero-padded."""
    wave = int16_round_trip(np.asarray(wave, dtype=np.float32))
    pieces = [wave[start : start + size] for start in range(0, max(len(wave), 1), hop)]
    return [np.pad(p, (0, size - len(p))) for p in pieces]


class ClapEmbedder(Embedder):
    name = "clap"
    sample_rate = 48_000
    fadtk_names = ("clap-laion-music",)

    def __init__(
        self,
        model,
        processor,
        checkpoint: str,
        window_seconds: float = 10.0,
        min_last_seconds: float = 1.0,
        batch_size: int = 8,
        windowing: str = "consecutive",
    ):
        self.model = model.eval()
        self.processor = processor
        self.checkpoint = checkpoint
        self.weights_digest = state_dict_digest(model)
        longest = processor.feature_extractor.nb_max_samples / self.sample_rate
        self.window_seconds = min(float(window_seconds), longest)
        self.min_last_seconds = float(min_last_seconds)
        self.batch_size = batch_size
        fusion = bool(model.config.audio_config.enable_fusion)
        # "fusion" input for fusion checkpoints (4 stacked mels), one mel otherwise; no window is
        # longer than the model's input, so neither mode ever crops at random.
        self.truncation = "fusion" if fusion else "rand_trunc"
        if windowing not in WINDOWINGS:
            raise ValueError(f"eval.clap.windowing={windowing!r}: choose one of {WINDOWINGS}")
        self.windowing = windowing
        if windowing == "fadtk":
            self.window = (
                f"fadtk: int16-quantised, {self.window_seconds:g} s windows at a 1 s hop to the "
                f"end, zero-padded; {model.config.projection_dim}-d per window"
            )
        else:
            self.window = (
                f"consecutive {self.window_seconds:g} s windows, no overlap (last one "
                f"repeat-padded, dropped if under {self.min_last_seconds:g} s unless it is the "
                f"only one); {model.config.projection_dim}-d per window"
            )
            self.fadtk_mismatch = (
                "eval.clap.windowing=consecutive embeds differently (fadtk: 10 s windows at a "
                "1 s hop, zero-padded, int16-quantised): set eval.clap.windowing=fadtk"
            )

    @classmethod
    def from_config(cls, clap_cfg, **_) -> ClapEmbedder:
        from transformers import ClapModel, ClapProcessor

        checkpoint = str(clap_cfg.get("checkpoint") or "")
        if not checkpoint:
            raise EmbedderUnavailable("no CLAP checkpoint (eval.clap.checkpoint is empty)")
        hub = hub_kwargs(checkpoint)
        try:
            model = ClapModel.from_pretrained(checkpoint, **hub)
            processor = ClapProcessor.from_pretrained(checkpoint, **hub)
        except (OSError, ValueError) as err:
            if hub_offline():
                how = "HF_HUB_OFFLINE=1, nothing is downloaded"
            elif hub:
                how = "not in the Hugging Face cache, and the hub cannot be reached"
            else:
                how = str(err)[:120]
            raise EmbedderUnavailable(
                f"CLAP checkpoint '{checkpoint}' is not available ({how}): download it once "
                "(`hf download laion/larger_clap_music`) or set eval.clap.checkpoint to a local "
                "folder"
            ) from err
        except Exception as err:  # a corrupt or truncated weights file (safetensors, pickle)
            raise EmbedderUnavailable(
                f"CLAP checkpoint '{checkpoint}' cannot be loaded ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:120]}): download it again or fix eval.clap.checkpoint"
            ) from err
        return cls(
            model,
            processor,
            checkpoint,
            window_seconds=float(clap_cfg.get("window_seconds", 10.0)),
            min_last_seconds=float(clap_cfg.get("min_last_seconds", 1.0)),
            windowing=str(clap_cfg.get("windowing", "consecutive")),
        )

    def windows(self, wave: np.ndarray) -> list[np.ndarray]:
        size = int(round(self.window_seconds * self.sample_rate))
        if self.windowing == "fadtk":
            return fadtk_windows(wave, size, self.sample_rate)
        if not len(wave):  # an empty file: one silent window (the extractor divides by 0)
            wave = np.zeros(1, dtype=np.float32)
        pieces = [wave[start : start + size] for start in range(0, len(wave), size)]
        minimum = int(round(self.min_last_seconds * self.sample_rate))
        if len(pieces) > 1 and len(pieces[-1]) < minimum:
            pieces = pieces[:-1]
        return pieces

    def _features(self, windows: list[np.ndarray]) -> torch.Tensor:
        features = self.processor.feature_extractor(
            windows,
            sampling_rate=self.sample_rate,
            truncation=self.truncation,
            padding="repeatpad",
            return_tensors="pt",
        )
        return features["input_features"]

    def embed_mono(self, wave: np.ndarray) -> np.ndarray:
        """One L2-normalised projection per window: ``[windows, projection_dim]``."""
        windows = self.windows(wave)
        outputs = []
        for start in range(0, len(windows), self.batch_size):
            features = self._features(windows[start : start + self.batch_size])
            is_longer = torch.zeros(features.shape[0], 1, dtype=torch.bool)
            output = self.model.get_audio_features(input_features=features, is_longer=is_longer)
            outputs.append(output.pooler_output.float())
        return torch.cat(outputs).numpy()

    @torch.inference_mode()
    def embed_text(self, texts: list[str]) -> np.ndarray:
        """L2-normalised text projections ``[len(texts), projection_dim]``.

        A long prompt is cut to what the text encoder can take: the tokenizer's own limit, and
        never more than its position table (RoBERTa: 2 positions are reserved), since a folder's
        tokenizer may carry no limit at all (then a long prompt would crash the text encoder).
        """
        tokenizer = self.processor.tokenizer
        positions = int(getattr(self.model.config.text_config, "max_position_embeddings", 514))
        limit = min(int(tokenizer.model_max_length), positions - 2)
        tokens = tokenizer(
            list(texts), padding=True, truncation=True, max_length=limit, return_tensors="pt"
        )
        output = self.model.get_text_features(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
        )
        return output.pooler_output.float().numpy()
