"""What an evaluation conditions generation on besides the text: melodies and audio prompts.

``eval.melody`` (melody models only; a text model always generates from text alone):

- ``auto`` (default): each prompt's ``melody`` file when the prompt set gives one, else the
  prompt's own audio (its ``reference`` file; for ``eval.prompts=heldout``, the held-out
  segment's window of its source file), as audiocraft evaluates its melody model: with the
  reference's own chroma; else none (the null chroma).
- ``prompts``: only the prompt set's ``melody`` files; ``reference``: only the prompts' own
  audio; ``none``: no melody.

``eval.audio_prompt`` (continuation evaluation, any model):

- ``auto`` (default): the prompt set's ``audio_prompt`` files when any prompt has one, else none.
- ``prompts``: those files; ``reference``: the first ``eval.audio_prompt_seconds`` of each
  prompt's own audio; ``none``.

A continued clip is scored on its continuation only (``duration`` seconds; the prompt's frames,
which the model re-synthesises, are cut off), so clips with and without a prompt compare alike.
The report says, per model, what was used and for how many prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from musicgen_train.audio import resample, to_channels
from musicgen_train.errors import UserError
from musicgen_train.evaluation.clips import Clip
from musicgen_train.evaluation.prompts import Prompt, PromptSet

MODES = ("auto", "prompts", "reference", "none")


@dataclass
class Conditioning:
    """Per prompt: the clip used as its melody and as its audio prompt (or None)."""

    melody: list[Clip | None]
    audio_prompt: list[Clip | None]
    prompt_seconds: float | None = None
    summary: dict = field(default_factory=dict)

    def any(self, index: int) -> bool:
        return self.melody[index] is not None or self.audio_prompt[index] is not None


def own_audio(prompt: Prompt) -> Clip | None:
    """The prompt's own audio: its held-out segment, else its ``reference`` file."""
    if prompt.segment is not None:
        return prompt.segment
    return None if prompt.reference is None else Clip(prompt.reference, name=prompt.id)


def _file(path) -> Clip | None:
    return None if path is None else Clip(path, name=path.name)


def conditioning_for(ecfg, prompt_set: PromptSet, melody_model: bool) -> Conditioning:
    prompts = prompt_set.prompts
    melody_mode = _mode(ecfg, "melody")
    prompt_mode = _mode(ecfg, "audio_prompt")
    melody: list[Clip | None] = [None] * len(prompts)
    if melody_model and melody_mode != "none":
        for i, prompt in enumerate(prompts):
            given, own = _file(prompt.melody), own_audio(prompt)
            if melody_mode == "prompts":
                melody[i] = given
            elif melody_mode == "reference":
                melody[i] = own
            else:
                melody[i] = given or own
    if prompt_mode == "auto":
        prompt_mode = "prompts" if any(p.audio_prompt for p in prompts) else "none"
    seconds = float(ecfg.get("audio_prompt_seconds", 3.0))
    audio_prompt: list[Clip | None] = [None] * len(prompts)
    if prompt_mode == "prompts":
        audio_prompt = [_file(p.audio_prompt) for p in prompts]
    elif prompt_mode == "reference":
        for i, prompt in enumerate(prompts):
            own = own_audio(prompt)
            if own is not None:
                audio_prompt[i] = Clip(own.path, own.offset, seconds, own.name)
    summary = {
        "melody": _describe(melody, melody_mode, prompts, "melody", melody_model),
        "audio_prompt": _describe(audio_prompt, prompt_mode, prompts, "audio_prompt", True),
    }
    if prompt_mode == "reference":
        summary["audio_prompt_seconds"] = seconds
    return Conditioning(
        melody, audio_prompt, seconds if prompt_mode == "reference" else None, summary
    )


def _mode(ecfg, key: str) -> str:
    mode = str(ecfg.get(key, "auto") or "none").lower()
    if mode not in MODES:
        raise UserError(f"eval.{key}={mode!r} is not allowed: choose from {list(MODES)}")
    return mode


def _describe(clips, mode: str, prompts, key: str, applies: bool) -> str:
    if not applies:
        return "none (a text model)"
    used = sum(c is not None for c in clips)
    if not used:
        return "none"
    own = sum(
        c is not None and getattr(p, key) is None for c, p in zip(clips, prompts, strict=True)
    )
    what = {
        "prompts": f"the prompt set's {key} files",
        "reference": "each prompt's own audio (reference / held-out segment)",
        "auto": "the prompt set's melody files, else each prompt's own audio",
    }[mode]
    detail = f"; {own} from the prompts' own audio" if mode == "auto" and own else ""
    return f"{what}: {used} of {len(prompts)} prompts{detail}"


def load_for(clip: Clip, sample_rate: int, channels: int) -> np.ndarray:
    """A conditioning clip as float ``[channels, samples]`` at ``sample_rate``."""
    audio, rate = clip.load()
    if audio.shape[-1] == 0:
        raise UserError(f"{clip.path}: no audio to condition on (offset {clip.offset} s)")
    return resample(to_channels(audio, channels), rate, sample_rate)
