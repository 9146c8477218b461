"""Melody models through transformers' ``generate``: a melody, an audio prompt, long form.

A melody model's condition (chroma frames, then the text) is a prefix of its decoder's input,
not cross-attention, so the engine's decode loop does not run it; each row goes through
``MusicgenMelodyForConditionalGeneration.generate``, seeded alone (``torch.manual_seed``), so a
row's audio does not depend on its batch.

- **Audio prompt**: its codec codes (``continuation.prompt_codes``, the model's own EnCodec) go
  in as ``decoder_input_ids``; ``generate`` puts the start token before them and forces them
  under the delay pattern, as it does for a text model's ``input_values``. The result holds the
  prompt's frames (re-synthesised), then ``duration`` seconds.
- **Long form**: ``long_form.plan``'s windows, each continuing the last ``window - stride``
  seconds of codes made so far (audiocraft's ``extend_stride``). A window's melody is the
  reference read periodically from the window's start (``melody.melody_window``, audiocraft's
  ``positions % wav_length``); the first window takes the melody as a one-pass call does, and
  each row's random state runs on across its windows, so the first window is exactly what
  ``duration=window`` gives with the same seed.

``generate`` returns audio, not codes: the codes of a window are read from the ``input_ids``
its stopping criteria see after the last step, with the delay pattern undone by the decoder's
own ``build_delay_pattern_mask`` / ``apply_delay_pattern_mask``, as ``generate`` does before
decoding. The whole clip's codes are decoded once, per row, as ``generate`` decodes them.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from musicgen_train.generation.long_form import plan
from musicgen_train.generation.melody import chroma_features, melody_window, read_melody
from musicgen_train.generation.rows import GenerationInputError, frames_for


class _LastIds(StoppingCriteria):
    """Keeps the ``input_ids`` of the last step; never stops generation itself."""

    ids: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        self.ids = input_ids
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def window_codes(
    engine, prompt: str, params, frames: int, prefix=None, features=None, criteria=None
) -> torch.Tensor:
    """One ``generate`` call for one row: ``frames`` new frames after ``prefix`` (codes
    ``[K, F]``, or None). Returns the codes ``[K, F + frames]`` (CPU), prefix first. Runs at
    the engine's precision (``engine.generation_model``)."""
    model, decoder = engine.generation_model(), engine.model.decoder
    device, k = engine.device, engine.num_codebooks
    kwargs = replace(params, duration=frames / engine.loaded.frame_rate).generate_kwargs(
        engine.loaded.frame_rate, k
    )
    inputs = engine.processor(text=[prompt], padding=True, return_tensors="pt")
    inputs = {name: value.to(device) for name, value in inputs.items()}
    last = _LastIds()
    start = int(model.generation_config.decoder_start_token_id)
    head = torch.full((k, 1), start, dtype=torch.long, device=device)
    if prefix is not None:
        kwargs["decoder_input_ids"] = prefix.to(device)
        head = torch.cat([head, prefix.to(device)], dim=-1)
    stopping = StoppingCriteriaList([last, *(criteria or [])])
    # the chroma goes through audio_enc_to_dec_proj, in the decoder body's dtype
    dtype = model.audio_enc_to_dec_proj.weight.dtype
    features = {name: value.to(dtype) for name, value in (features or {}).items()}
    model.generate(**inputs, **features, **kwargs, stopping_criteria=stopping)
    ids = last.ids
    _, mask = decoder.build_delay_pattern_mask(head, pad_token_id=start, max_length=ids.shape[-1])
    ids = decoder.apply_delay_pattern_mask(ids, mask)
    pad = int(model.generation_config.pad_token_id)
    return ids[ids != pad].reshape(k, -1).cpu()


def generate_melody(
    engine,
    prompts: list[str],
    params,
    seeds,
    *,
    melody=None,
    features: dict | None = None,
    audio_prompt=None,
    stopping_criteria=None,
) -> np.ndarray:
    """Audio ``[batch, channels, samples]`` of a melody model, row by row (see the module).
    ``melody``: a file or float audio ``[C, S]`` at ``engine.sample_rate``; ``features``: the
    chroma already made (``{"input_features": [batch, frames, 12]}``), used for every window."""
    codes = melody_codes(
        engine,
        prompts,
        params,
        seeds,
        melody=melody,
        features=features,
        audio_prompt=audio_prompt,
        stopping_criteria=stopping_criteria,
    )
    hop = int(round(engine.sample_rate / engine.loaded.frame_rate))
    prompt_frames = 0 if audio_prompt is None else codes.prompt_frames
    wanted = int(round(params.duration * engine.sample_rate)) + prompt_frames * hop
    audio = [engine.decode_codes(row[None]) for row in codes]  # per row, as generate decodes
    return np.ascontiguousarray(np.concatenate(audio)[..., :wanted])


class RowCodes(list):
    """Each row's codes ``[K, frames]`` (an audio prompt's frames first)."""

    prompt_frames: int = 0


def melody_codes(
    engine,
    prompts: list[str],
    params,
    seeds,
    *,
    melody=None,
    features: dict | None = None,
    audio_prompt=None,
    stopping_criteria=None,
) -> RowCodes:
    """The codes of ``generate_melody``, before decoding."""
    if melody is not None and features:
        raise GenerationInputError("give melody= or input_features, not both")
    loaded, rate = engine.loaded, engine.loaded.frame_rate
    reference = None if melody is None else read_melody(loaded, melody, engine.sample_rate)
    prefix = None if audio_prompt is None else engine.prompt_codes(audio_prompt, params)
    out = RowCodes()
    out.prompt_frames = 0 if prefix is None else int(prefix.shape[-1])
    total = frames_for(params.duration, rate)
    if params.duration > engine.window_seconds + 1e-9 and stopping_criteria is None:
        window = frames_for(engine.window_seconds, rate)
        steps = plan(total, window, frames_for(engine.extend_stride, rate), out.prompt_frames)
    else:
        engine.sampling(params)  # the one-pass length check
        steps = [(out.prompt_frames, total)]
    for i, (prompt, seed) in enumerate(zip(prompts, seeds, strict=True)):
        fixed = {name: value[i : i + 1] for name, value in (features or {}).items()}
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(int(seed))
            codes = prefix
            for context, new in steps:
                begins = 0 if codes is None else codes.shape[-1] - context  # window's 1st frame
                row = fixed or _window_chroma(engine, reference, begins)
                given = None if codes is None or context == 0 else codes[:, -context:]
                made = window_codes(engine, prompt, params, new, given, row, stopping_criteria)
                codes = made if codes is None else torch.cat([codes, made[:, context:]], dim=1)
        out.append(codes)
    return out


def _window_chroma(engine, reference, begins: int) -> dict:
    """The chroma of a window whose first frame is clip frame ``begins`` (none: null chroma)."""
    if reference is None:
        return {}
    if begins == 0:
        return chroma_features(engine.loaded, reference)
    extractor = engine.processor.chroma
    start = int(round(begins / engine.loaded.frame_rate * extractor.sampling_rate))
    length = int(round(engine.window_seconds * extractor.sampling_rate))
    return chroma_features(engine.loaded, melody_window(reference, start, length))
