"""Clips longer than the model's window: windowed continuation on codes, as audiocraft extends.

audiocraft's ``MusicGen.generate`` beyond ``max_duration`` generates a first window, then again
and again a window whose first ``window - extend_stride`` seconds are the last seconds made so
far (as a prompt), keeping ``extend_stride`` new seconds each time. Here each window's prompt is
the codec codes themselves (forced under the delay pattern, ``DecodeLoop.add_row(prefix=...)``),
never decoded and re-encoded: no codec round trip per window, and the codes on both sides of a
seam are one sequence that EnCodec decodes in one pass at the end.

Each row keeps one ``torch.Generator`` across its windows: a seed gives the whole long clip, and
the first window is what ``duration=window`` gives with that seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch

from musicgen_train.generation.rows import GenerationInputError, frames_for, seeded_generator


@dataclass
class LongForm:
    """The codes of each row ``[K, frames]`` (an audio prompt's frames first, when given) and,
    per window, each row's codes as that window made them (its forced prefix included)."""

    codes: list[torch.Tensor]
    windows: list[list[torch.Tensor]] = field(default_factory=list)
    context_frames: int = 0


# The longest clip long form makes. Without a bound a mistyped duration (1e9) plans millions of
# windows and fills memory before the first step; an hour is ~0.9 GB of float32 stereo audio at
# 32 kHz and far beyond what anyone renders in one call. A longer piece is several calls, each
# continuing the last with audio_prompt=.
MAX_LONG_FORM_SECONDS = 3600.0


def check_duration(seconds: float) -> None:
    """A long-form ``duration`` must be a finite number of seconds up to an hour."""
    if not 0 < seconds <= MAX_LONG_FORM_SECONDS:  # also False for nan
        raise GenerationInputError(
            f"duration={seconds:g} is not allowed: long form makes up to "
            f"{MAX_LONG_FORM_SECONDS:g} s a clip; continue a longer piece with audio_prompt="
        )


def plan(total: int, window: int, stride: int, prompt: int = 0) -> list[tuple[int, int]]:
    """(prefix frames, new frames) per window for ``total`` new frames after ``prompt`` frames:
    the first window fills up to ``window`` frames, each next one keeps ``window - stride``
    frames of context and adds at most ``stride``."""
    if not 0 < stride < window:
        raise GenerationInputError(
            f"extend_stride ({stride} frames) must be above 0 and below the window ({window})"
        )
    if prompt >= window:
        raise GenerationInputError(
            f"the audio prompt ({prompt} frames) fills the whole window ({window} frames)"
        )
    steps = [(prompt, min(window - prompt, total))]
    made = steps[0][1]
    while made < total:
        new = min(stride, total - made)
        steps.append((window - stride, new))
        made += new
    return steps


def long_form_codes(
    engine,
    prompts: list[str],
    params,
    seeds: list[int | None],
    *,
    window: float,
    stride: float,
    prefixes: list[torch.Tensor | None] | None = None,
    on_step=None,
    on_codes=None,
    chroma=None,
) -> LongForm:
    """Generate ``params.duration`` seconds per prompt in windows of ``window`` seconds that
    advance by ``stride`` seconds; ``prefixes``: per row, audio-prompt codes ``[K, F]``.

    ``on_codes(start, codes)``: after every step, the frames of the whole clip that became final
    (``codes`` ``[rows, K, n]``, frames ``start .. start + n`` of the clip, the audio prompt's
    first), so a listener can hear the clip while later windows are still to come: a frame is
    final once complete, since no later window rewrites it.

    ``chroma``: a melody model's ``melody.RowChroma`` (each row's melody for a window that
    starts at a given frame of the clip)."""
    rate = engine.loaded.frame_rate
    window_frames, stride_frames = frames_for(window, rate), frames_for(stride, rate)
    if window > engine.max_duration + 1e-9:
        raise GenerationInputError(
            f"window_seconds={window:g} is beyond this model's limit of {engine.max_duration:.2f} s"
        )
    check_duration(params.duration)
    prefixes = prefixes or [None] * len(prompts)
    prompt_frames = {0 if p is None else int(p.shape[-1]) for p in prefixes}
    if len(prompt_frames) != 1:
        raise GenerationInputError("rows of one long-form batch need prompts of one length")
    steps = plan(frames_for(params.duration, rate), window_frames, stride_frames, *prompt_frames)
    generators = [seeded_generator(engine.device, seed) for seed in seeds]
    codes = [p.clone() if p is not None else None for p in prefixes]
    result = LongForm(codes=[], context_frames=window_frames - stride_frames)
    final = 0  # frames of the clip handed to on_codes
    for context, new in steps:
        offset = 0 if codes[0] is None or context == 0 else codes[0].shape[-1] - context
        sampling = engine.sampling(replace(params, duration=new / rate))
        loop = engine.new_loop()
        rows = []
        melodies = [None] * len(prompts) if chroma is None else chroma.at(offset)
        for prompt, generator, made, melody in zip(
            prompts, generators, codes, melodies, strict=True
        ):
            prefix = None if made is None or context == 0 else made[:, -context:]
            rows.append(
                loop.add_row(
                    prompt, sampling, generator=generator, prefix=prefix, on_step=on_step,
                    chroma=melody,
                )
            )  # fmt: skip
        stereo = engine.model.config.decoder.audio_channels == 2
        while loop.rows:
            loop.step()
            if on_codes is not None:
                final = report_final_frames(rows, stereo, offset, final, on_codes)
        window_codes = [row.codes(stereo) for row in rows]
        result.windows.append(window_codes)
        codes = [
            w if made is None else torch.cat([made, w[:, context:]], dim=1)
            for made, w in zip(codes, window_codes, strict=True)
        ]
    result.codes = codes
    return result


def report_final_frames(rows, stereo: bool, offset: int, final: int, on_codes) -> int:
    """Hand ``on_codes(start, codes [rows, K, frames])`` the window's complete frames past the
    clip's ``final`` first ones (window frame ``j`` is clip frame ``offset + j``: later windows
    never rewrite a complete frame); returns the new count of final frames. The rows of a
    long-form batch step together, so they complete the same frames. Also the service's long
    job (one row per window in the running batch, ``serve/continuous.py``)."""
    window = [row.codes(stereo) for row in rows]
    complete = offset + min(codes.shape[-1] for codes in window)
    if complete > final:
        on_codes(
            final, torch.stack([codes[:, final - offset : complete - offset] for codes in window])
        )
    return max(final, complete)


def seam_samples(steps: list[tuple[int, int]], hop: int, prompt: int = 0) -> list[int]:
    """Where each window after the first starts its new audio, in samples."""
    out, made = [], prompt + steps[0][1]
    for _, new in steps[1:]:
        out.append(made * hop)
        made += new
    return out


def spectral_flux(audio: np.ndarray, n_fft: int = 1024, hop: int = 256) -> np.ndarray:
    """Spectral flux per STFT frame of mono ``[samples]`` audio: the L2 norm of the rise of
    each magnitude bin since the previous frame (Hann window), divided by the frame's
    magnitude norm so loud and quiet passages compare. ``flux[i]`` is the change into frame
    ``i + 1``, centred at sample ``(i + 1) * hop + n_fft // 2``."""
    audio = np.asarray(audio, dtype=np.float64).reshape(-1)
    count = 1 + (len(audio) - n_fft) // hop
    if count < 2:
        raise ValueError(f"audio of {len(audio)} samples is too short for frames of {n_fft}")
    frames = np.lib.stride_tricks.sliding_window_view(audio, n_fft)[::hop][:count]
    mags = np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=1))
    rise = np.maximum(np.diff(mags, axis=0), 0.0)
    return np.linalg.norm(rise, axis=1) / (np.linalg.norm(mags[1:], axis=1) + 1e-12)


def seam_flux(
    audio: np.ndarray, seams: list[int], n_fft: int = 1024, hop: int = 256
) -> dict[str, float]:
    """Spectral flux at the joins against within-window frames: a frame is "at a seam" when
    its change spans a seam sample (its two STFT frames lie on both sides), "within" when it is
    further than ``n_fft`` samples from every seam."""
    flux = spectral_flux(audio, n_fft, hop)
    centres = (np.arange(len(flux)) + 1) * hop + n_fft // 2
    seams_arr = np.asarray(seams, dtype=np.float64)
    distance = np.abs(centres[:, None] - seams_arr[None, :]).min(axis=1)
    at = distance <= (n_fft + hop) / 2
    within = distance > n_fft
    if not at.any() or not within.any():
        raise ValueError("need frames both at the seams and away from them")
    at_mean, within_mean = float(flux[at].mean()), float(flux[within].mean())
    return {
        "seam_flux": at_mean,
        "within_flux": within_mean,
        "ratio": at_mean / within_mean,
        "within_p95": float(np.percentile(flux[within], 95)),
        "seam_frames": int(at.sum()),
        "within_frames": int(within.sum()),
    }
