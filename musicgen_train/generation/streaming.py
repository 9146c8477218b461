"""Audio while it is generated: a transformers streamer that decodes codec tokens incrementally.

``generate`` hands the streamer one token per codebook per step, in MusicGen's delay pattern:
codebook ``k`` of frame ``f`` arrives at step ``f + k + 1``, so frame ``f`` is complete after step
``f + K`` (stereo: the left and right codebooks alternate and each pair shares the delay ``k//2``,
``rows.codebook_delays``). EnCodec is not causal (convolutions look ahead, an LSTM carries state),
so a frame's audio depends on its neighbours: each window is decoded with some left context, the
last ``lookahead`` frames are held back until the next window sees what follows them, and the held
back audio is crossfaded into the next window's version of the same samples, so chunk borders carry
no click. The first chunk may be shorter than the others (``first_chunk_frames``): a listener hears
audio after ``first_chunk_frames + lookahead_frames + K - 1`` steps instead of waiting for a whole
chunk.

With ``defer=True`` the streamer does not decode by itself: ``put`` marks the window that is
``due`` and the caller decodes the due windows of many streamers at once (``decode_due``: one
codec call per window length, so rows that reach a chunk border at the same step share it).

MusicGen's ``generate`` in transformers 5.23 takes a ``streamer`` argument but never hands it to
its sampling loop (only the start tokens arrive), so ``TokenFeed`` feeds the streamer from a
stopping criterion instead, which ``generate`` does call after every step.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from transformers.generation.stopping_criteria import StoppingCriteria
from transformers.generation.streamers import BaseStreamer

from musicgen_train.generation.codec import decode
from musicgen_train.generation.rows import codebook_delays

# (batch index, float32 [channels, samples]) for each piece of audio that is final.
AudioCallback = Callable[[int, np.ndarray], None]
# (steps done, total steps)
ProgressCallback = Callable[[int, int], None]


class CodecStreamer(BaseStreamer):
    def __init__(
        self,
        model,
        *,
        batch_size: int,
        max_new_tokens: int,
        num_samples: int,
        on_audio: AudioCallback | None = None,
        on_progress: ProgressCallback | None = None,
        chunk_frames: int = 25,
        context_frames: int = 50,
        lookahead_frames: int = 5,
        crossfade_frames: int = 2,
        first_chunk_frames: int | None = None,
        defer: bool = False,
    ):
        if not 0 < crossfade_frames <= lookahead_frames:
            raise ValueError("crossfade_frames must be between 1 and lookahead_frames")
        self.model = model
        self.batch_size = batch_size
        self.num_codebooks = model.decoder.num_codebooks
        stereo = getattr(model.config.decoder, "audio_channels", 1) == 2
        self.delays = codebook_delays(self.num_codebooks, stereo)
        self.max_new_tokens = max_new_tokens
        self.total_frames = max_new_tokens - max(self.delays)
        self.num_samples = num_samples  # what the caller keeps; trailing samples are dropped
        self.hop = int(np.prod(model.config.audio_encoder.upsampling_ratios))
        self.on_audio = on_audio
        self.on_progress = on_progress
        self.chunk_frames = chunk_frames
        self.first_chunk_frames = chunk_frames if first_chunk_frames is None else first_chunk_frames
        if self.first_chunk_frames < 1 or chunk_frames < 1:
            raise ValueError("chunk_frames and first_chunk_frames must be at least 1")
        self.defer = defer
        self.due: tuple[int, int, int] | None = None  # (start, upto, available) to decode
        self.context_frames = context_frames
        self.lookahead_frames = lookahead_frames
        self.crossfade = crossfade_frames * self.hop
        self.tokens = torch.zeros(
            (batch_size, self.num_codebooks, max_new_tokens + 1), dtype=torch.long
        )
        self.step = -1  # the first put() holds the start tokens (step 0)
        self.emitted_frames = 0  # audio up to this frame has been handed out
        self.emitted_samples = 0
        self.tail: np.ndarray | None = None  # decoded but held back: [batch, channels, samples]

    # --- BaseStreamer --------------------------------------------------------------------------

    def put(self, value: torch.Tensor) -> None:
        self.step += 1
        if self.step == 0:
            return  # the decoder start tokens, not audio
        if self.step <= self.max_new_tokens:
            self.tokens[:, :, self.step] = value.reshape(self.batch_size, self.num_codebooks)
        if self.on_progress is not None:
            self.on_progress(min(self.step, self.max_new_tokens), self.max_new_tokens)
        self._emit_if_due()

    def put_frames(self, start: int, codes: torch.Tensor) -> None:
        """Frames ``[start, start + n)`` of every row, final and without the delay pattern
        (``codes`` ``[batch, K, n]``, ``start`` the frames complete so far): for callers that
        learn codes frame by frame rather than as ``generate``'s delayed columns (long form,
        whose windows each continue the last one's codes)."""
        if start != self.complete_frames:
            raise ValueError(f"frames must follow on: {self.complete_frames} are in, not {start}")
        stop = min(start + codes.shape[-1], self.total_frames)
        for k, delay in enumerate(self.delays):
            self.tokens[:, k, start + delay + 1 : stop + delay + 1] = codes[:, k, : stop - start]
        self.step = stop + max(self.delays)  # the step at which frame stop - 1 completes
        self._emit_if_due()

    def _emit_if_due(self) -> None:
        complete = self.complete_frames
        chunk = self.chunk_frames if self.emitted_frames else self.first_chunk_frames
        if self.on_audio is not None and complete - self.emitted_frames >= (
            chunk + self.lookahead_frames
        ):
            self._emit(upto=complete - self.lookahead_frames, available=complete)

    def end(self) -> None:
        if self.due is not None:  # a deferred window nobody decoded: decode it now
            self.deliver(self._decode(self.due[0], self.due[2]))
        if self.on_audio is not None and self.emitted_frames < self.complete_frames:
            self.defer = False
            self._emit(upto=self.complete_frames, available=self.complete_frames)

    # --- decoding --------------------------------------------------------------------------------

    @property
    def complete_frames(self) -> int:
        return int(np.clip(self.step - max(self.delays), 0, self.total_frames))

    def codes(self, start: int, stop: int) -> torch.Tensor:
        """Frames ``[start, stop)``, delay pattern undone: ``[batch, codebooks, frames]``."""
        index = torch.arange(start, stop)
        columns = [self.tokens[:, k, index + delay + 1] for k, delay in enumerate(self.delays)]
        return torch.stack(columns, dim=1)

    def _decode(self, start: int, stop: int) -> np.ndarray:
        return decode_codes(self.model, self.codes(start, stop))

    def _emit(self, upto: int, available: int) -> None:
        """Hand out audio for frames ``[emitted_frames, upto)``; keep ``[upto, available)`` back
        (or, deferred, mark that window ``due``)."""
        start = max(0, self.emitted_frames - self.context_frames)
        self.due = (start, upto, available)
        if not self.defer:
            self.deliver(self._decode(start, available))

    def deliver(self, audio: np.ndarray) -> None:
        """The decoded ``due`` window ``[batch, channels, samples]``: hand out its new part."""
        start, upto, _available = self.due
        self.due = None
        first = (self.emitted_frames - start) * self.hop
        fresh = audio[..., first:]  # from the first sample not yet handed out
        if self.tail is not None:
            fresh = fresh.copy()
            n = min(self.crossfade, self.tail.shape[-1], fresh.shape[-1])
            # sin^2 + cos^2 = 1: the two decodes of the same samples blend without a level dip.
            fade_in = np.sin(np.linspace(0, np.pi / 2, n, dtype=np.float32)) ** 2
            fresh[..., :n] = self.tail[..., :n] * (1 - fade_in) + fresh[..., :n] * fade_in
        keep = (upto - self.emitted_frames) * self.hop
        out, self.tail = fresh[..., :keep], fresh[..., keep:]
        out = out[..., : max(0, self.num_samples - self.emitted_samples)]
        self.emitted_frames, self.emitted_samples = upto, self.emitted_samples + out.shape[-1]
        if out.shape[-1]:
            for index in range(self.batch_size):
                self.on_audio(index, out[index])


@torch.inference_mode()
def decode_codes(model, codes: torch.Tensor) -> np.ndarray:
    """Codes ``[batch, K, frames]`` -> float32 audio ``[batch, channels, samples]``."""
    # generation/codec.py: weight norm folded once (not recomputed for every window), the fast
    # transposed convolutions; the same audio to float rounding
    codes = codes.to(model.device)
    codec = model.audio_encoder
    if model.config.decoder.audio_channels == 2:  # stereo: left's codebook k at 2k, right's at 2k+1
        audio = torch.cat([decode(codec, codes[:, ::2]), decode(codec, codes[:, 1::2])], dim=1)
    else:
        audio = decode(codec, codes)
    return audio.float().cpu().numpy()


def decode_due(streamers: list[CodecStreamer]) -> int:
    """Decode the ``due`` windows of ``streamers``, one codec call per model and window
    length, and deliver each its audio; returns how many codec calls it made."""
    groups: dict[tuple[int, int], list[CodecStreamer]] = {}
    for streamer in streamers:
        if streamer.due is not None:
            start, _upto, available = streamer.due
            key = (id(streamer.model), available - start)
            groups.setdefault(key, []).append(streamer)
    for group in groups.values():
        model = group[0].model
        codes = torch.cat([s.codes(s.due[0], s.due[2]) for s in group])
        audio = decode_codes(model, codes)
        offset = 0
        for streamer in group:
            streamer.deliver(audio[offset : offset + streamer.batch_size])
            offset += streamer.batch_size
    return len(groups)


class TokenFeed(StoppingCriteria):
    """Hands each new column of ``input_ids`` to a streamer; never stops generation itself."""

    def __init__(self, streamer: BaseStreamer):
        self.streamer = streamer
        self.fed = 0

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        for column in range(self.fed, input_ids.shape[-1]):
            self.streamer.put(input_ids[:, column].cpu())
        self.fed = input_ids.shape[-1]
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
