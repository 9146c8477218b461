"""Text -> audio with transformers' ``generate``: tokenise, sample codes, decode with EnCodec."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from musicgen_train.generation.null_condition import null_condition
from musicgen_train.model.loader import LoadedModel


@dataclass(frozen=True)
class GenerationParams:
    duration: float = 8.0  # seconds
    guidance_scale: float = 3.0  # classifier-free guidance; 1.0 turns it off
    temperature: float = 1.0
    top_k: int = 250
    top_p: float = 0.0  # 0 = off
    seed: int | None = None

    def generate_kwargs(self, frame_rate: float, num_codebooks: int) -> dict:
        # The delay pattern costs num_codebooks - 1 steps before the last codebook catches up.
        # Round up: round() would give 12 frames (0.24 s) for 0.25 s at 50 frames/s.
        frames = max(1, math.ceil(self.duration * frame_rate - 1e-9))
        kwargs = {
            "do_sample": True,
            "max_new_tokens": frames + num_codebooks - 1,
            "guidance_scale": self.guidance_scale if self.guidance_scale > 1.0 else None,
            "temperature": self.temperature,
            "top_k": self.top_k,
        }
        if self.top_p > 0:
            kwargs["top_p"] = self.top_p
        return kwargs

    def batch_key(self) -> tuple:
        """Jobs whose keys are equal can share one ``generate`` call."""
        return tuple(v for k, v in asdict(self).items() if k != "seed")


class GenerationEngine:
    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.model = loaded.model
        self.processor = loaded.processor

    @property
    def sample_rate(self) -> int:
        return self.loaded.sample_rate

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _generate_kwargs(self, params: GenerationParams) -> dict:
        num_codebooks = self.model.config.decoder.num_codebooks
        return params.generate_kwargs(self.loaded.frame_rate, num_codebooks)

    def _inputs(self, prompts: list[str]) -> dict:
        inputs = self.processor(text=list(prompts), padding=True, return_tensors="pt")
        return {k: v.to(self.device) for k, v in inputs.items()}

    @torch.inference_mode()
    def generate(self, prompts: list[str], params: GenerationParams | None = None, **kw):
        """Audio for each prompt as float32 ``[batch, channels, samples]`` at ``sample_rate``."""
        params = params or GenerationParams()
        with torch.random.fork_rng(devices=[]):
            if params.seed is not None:
                torch.manual_seed(params.seed)
            inputs = self._inputs(prompts)
            # "" = the null condition, as training blanks captions (issue 15; keep when porting).
            with null_condition(self.model, list(prompts), inputs):
                audio = self.model.generate(**inputs, **self._generate_kwargs(params), **kw)
        audio = audio.float().cpu().numpy()
        wanted = int(round(params.duration * self.sample_rate))
        return np.ascontiguousarray(audio[..., :wanted])
