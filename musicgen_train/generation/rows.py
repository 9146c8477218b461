"""One request in the decode loop: its sampling parameters and its row of tokens.

A ``Row`` carries everything that makes a request its own (prompt, sampling settings, length,
random generator, hooks), so rows can join and leave a running batch between steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from musicgen_train.errors import UserError


class GenerationInputError(UserError):
    """A request the engine cannot run (empty prompt, length beyond the model's positions)."""


@dataclass(frozen=True)
class SamplingParams:
    """How one row samples; the same meaning as ``generate``'s arguments of the same names."""

    max_new_tokens: int
    guidance_scale: float | None = 3.0  # None or <= 1: no classifier-free guidance
    temperature: float = 1.0
    top_k: int = 250  # 0: off
    top_p: float | None = None  # None or >= 1: off

    @property
    def cfg(self) -> bool:
        return self.guidance_scale is not None and self.guidance_scale > 1

    def warpers(self) -> list:
        """transformers' warpers, in ``GenerationMixin._get_logits_processor``'s order."""
        out = []
        if self.temperature is not None and self.temperature != 1.0:
            out.append(TemperatureLogitsWarper(self.temperature))
        if self.top_k is not None and self.top_k != 0:
            out.append(TopKLogitsWarper(top_k=self.top_k, min_tokens_to_keep=1))
        if self.top_p is not None and self.top_p < 1.0:
            out.append(TopPLogitsWarper(top_p=self.top_p, min_tokens_to_keep=1))
        return out


@dataclass(eq=False)
class Row:
    """One request in the running batch.

    ``tokens[:, :step + 1]`` are the ids so far (column 0 the decoder start tokens), as
    ``generate``'s ``input_ids`` hold them; ``pattern`` is the delay-pattern mask for the whole
    length. With an audio prompt of F frames, ``tokens[:, :F + 1]`` start filled (the start
    column, then the prompt's codes under the delay pattern) and the first ``forced = F`` steps
    only run the model over them (as ``generate``'s prefill does), drawing nothing.
    ``on_step(row)`` runs after each of its steps; ``should_stop()`` before each step, and a
    non-None answer ends the row with that ``stop_reason``.

    A text model's row attends to its prompt through cross-attention (``cross``: each layer's
    K/V). A melody model's row has its condition as a prefix of the decoder's input instead
    (``prefix``: the conditional and the null rows' states ``[P, D]``, chroma frames then text):
    its step ``s`` sits at position ``offset + s``, ``offset = P``."""

    id: int
    prompt: str
    params: SamplingParams
    generator: torch.Generator
    tokens: torch.Tensor  # [K, max_new_tokens + 1], long, on CPU
    pattern: torch.Tensor  # [K, max_new_tokens + 1]
    cross: list | None  # per layer (k, v), each [1, H, T, D]; None for a melody model's row
    on_step: Callable[[Row], None] | None = None
    should_stop: Callable[[], str | None] | None = None
    tag: object = None  # the caller's, handed back untouched
    step: int = 0  # steps done
    stop_reason: str | None = None
    warpers: list = field(default_factory=list)
    forced: int = 0  # steps whose next ids are known (an audio prompt's frames): no sampling
    prefix: tuple | None = None  # a melody model's condition: (conditional, null) [P, D]
    prefilled: bool = False  # the prefix and the audio prompt's columns are in the cache

    @property
    def offset(self) -> int:
        """Positions before the start token: the condition prefix's length (0: text models)."""
        return 0 if self.prefix is None else int(self.prefix[0].shape[0])

    @property
    def position(self) -> int:
        """The position (and cache slot) of the token this row feeds at its next step."""
        return self.offset + self.step

    @property
    def total_steps(self) -> int:
        """Steps until the row is done: the prompt's frames, then ``max_new_tokens`` sampled."""
        return self.forced + self.params.max_new_tokens

    @property
    def finished(self) -> bool:
        return self.stop_reason is not None or self.step >= self.total_steps

    def delayed_ids(self) -> torch.Tensor:
        """The ids so far with the delay pattern's pads forced, ``[K, step + 1]``."""
        ids = self.tokens[:, : self.step + 1]
        mask = self.pattern[:, : self.step + 1]
        return torch.where(mask == -1, ids, mask)

    def codes(self, stereo: bool = False) -> torch.Tensor:
        """The codec codes ``[K, frames]`` of the frames complete so far (all of them once the
        row finished): the delay pattern undone, as ``generate`` does by dropping its pads."""
        ids = self.delayed_ids()
        delays = codebook_delays(ids.shape[0], stereo)
        frames = max(0, self.step - max(delays))
        return torch.stack([ids[k, 1 + d : 1 + d + frames] for k, d in enumerate(delays)])


def codebook_delays(num_codebooks: int, stereo: bool = False) -> list[int]:
    """The step by which codebook ``k`` lags its frame in MusicGen's delay pattern: ``k``; for
    stereo, whose left and right codebooks alternate (``2k``, ``2k + 1``), ``k // 2`` (the pair
    shares a delay, as ``build_delay_pattern_mask`` builds it)."""
    return [k // 2 if stereo else k for k in range(num_codebooks)]


def frames_for(duration: float, frame_rate: float) -> int:
    """Frames for ``duration`` seconds, rounded up (0.25 s at 50 frames/s is 13 frames)."""
    return max(1, math.ceil(duration * frame_rate - 1e-9))


def seeded_generator(device: torch.device | str, seed: int | None) -> torch.Generator:
    """A row's random generator on the model's device (as ``generate`` draws: the same seed,
    the same stream); ``seed=None``: a random one."""
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    if not -(2**63) <= int(seed) < 2**64:  # what torch.Generator.manual_seed takes
        raise GenerationInputError(f"seed={seed} is outside torch's range -2^63..2^64-1")
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return generator
