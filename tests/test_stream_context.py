"""The streaming defaults: how much left context and lookahead each streamed window decodes.

EnCodec's decoder is not causal: a convolution before its LSTM and the upsampling layers after
it read frames after a sample's own, and the LSTM carries state from every earlier frame. The
serve defaults (``StreamSettings``) must hold back at least the decoder's look-ahead and give
each window enough left context that the streamed audio stays within a stated tolerance of
one decode of the whole clip (what the service stores). ``bench/stream_context.py`` measures
the same on musicgen-small's codec shape.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import EncodecModel

from musicgen_train.generation.streaming import CodecStreamer, decode_codes
from musicgen_train.model.shapes import encodec_32khz_config
from musicgen_train.model.tiny import init_codebooks, tiny_config
from musicgen_train.serve.settings import StreamSettings

# The decoder's look-ahead in frames, from transformers' EncodecDecoder and EnCodec's config
# (kernel_size 7, upsampling ratios 8, 5, 4, 4 with transposed kernels 2r, residual kernel 3):
# the first convolution (kernel 7) reads 3 frames ahead into the LSTM's input; each transposed
# convolution trims r//2 of its r-sample overlap on the right, and with the residual (kernel 3)
# and last (kernel 7) convolutions the layers after the LSTM reach into the next frame, never
# further: 3 + 1 frames.
DECODER_LOOKAHEAD = 4
# A sample also reads 3 + 1 frames before its own through the convolutions; the LSTM's memory
# comes on top of that.
DECODER_LOOKBACK_CONV = 4
HOP = 640  # samples per codec frame: 8 * 5 * 4 * 4


@pytest.fixture(scope="module")
def codec():
    """A small random EnCodec at 32 kHz with non-causal, reflect-padded convolutions: the real
    codec's layer shapes (kernels, strides, dilations) at a fraction of its widths."""
    config = tiny_config().audio_encoder
    config.use_causal_conv = False
    config.pad_mode = "reflect"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = EncodecModel(config).eval()
        init_codebooks(model)
    assert math.prod(config.upsampling_ratios) == HOP
    return model


def as_musicgen(codec) -> SimpleNamespace:
    """What CodecStreamer and decode_codes read from a MusicGen model."""
    config = codec.config
    return SimpleNamespace(
        audio_encoder=codec,
        device=torch.device("cpu"),
        decoder=SimpleNamespace(num_codebooks=4),
        config=SimpleNamespace(audio_encoder=config, decoder=SimpleNamespace(audio_channels=1)),
    )


def stream_like_the_service(model, codes: torch.Tensor, stream: StreamSettings) -> np.ndarray:
    """Feed ``codes`` ``[1, K, frames]`` one delay-pattern step at a time to a CodecStreamer set
    up as the service sets it up from ``serve.stream`` (serve/continuous.py)."""
    k, frames = codes.shape[1], codes.shape[2]
    rate = 50
    pieces: list[np.ndarray] = []
    streamer = CodecStreamer(
        model,
        batch_size=1,
        max_new_tokens=frames + k - 1,
        num_samples=frames * HOP,
        on_audio=lambda _i, audio: pieces.append(audio),
        chunk_frames=max(1, round(stream.chunk_seconds * rate)),
        context_frames=round(stream.context_seconds * rate),
        lookahead_frames=stream.lookahead_frames,
        crossfade_frames=min(2, stream.lookahead_frames),
        first_chunk_frames=max(1, round(stream.first_chunk_seconds * rate)),
    )
    streamer.put(torch.zeros(1, k, dtype=torch.long))  # the decoder start tokens
    for step in range(1, frames + k):
        column = torch.zeros(1, k, dtype=torch.long)
        for book in range(k):
            if 0 <= step - book - 1 < frames:
                column[0, book] = codes[0, book, step - book - 1]
        streamer.put(column)
    streamer.end()
    assert len(pieces) >= 5  # it streamed: several chunks, not one at the end
    return np.concatenate(pieces, axis=-1)


def reach_in_frames(codec, frame: int = 20, frames: int = 40) -> tuple[int, int]:
    """Which latent frames the samples of ``frame`` depend on, read from the gradient of the
    real decoder: (first, last) frame with a non-zero gradient."""
    generator = torch.Generator().manual_seed(0)
    latent = torch.randn(1, codec.config.hidden_size, frames, generator=generator)
    latent.requires_grad_(True)
    audio = codec.decoder(latent)
    audio[..., frame * HOP : (frame + 1) * HOP].sum().backward()
    touched = np.flatnonzero(latent.grad.abs().sum(dim=(0, 1)).numpy() > 0)
    return int(touched[0]), int(touched[-1])


@pytest.fixture(params=["small", "musicgen-small"])
def any_codec(request, codec):
    """The small codec, and one of musicgen-small's codec shape (its reach is what counts)."""
    if request.param == "small":
        return codec
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return EncodecModel(encodec_32khz_config()).eval()


def test_the_decoder_looks_ahead_four_frames(any_codec):
    first, last = reach_in_frames(any_codec)
    assert last - 20 == DECODER_LOOKAHEAD
    assert first == 0  # the LSTM: every earlier frame counts


def test_the_convolutions_look_back_four_frames(any_codec):
    """Without the LSTM's state (its layer replaced by the identity, as its skip path is), the
    convolutions alone reach this far back: the left context must cover at least this."""
    layers = any_codec.decoder.layers
    lstm_at = [i for i, layer in enumerate(layers) if type(layer).__name__ == "EncodecLSTM"]
    assert len(lstm_at) == 1
    saved = layers[lstm_at[0]]
    layers[lstm_at[0]] = torch.nn.Identity()
    try:
        first, last = reach_in_frames(any_codec)
    finally:
        layers[lstm_at[0]] = saved
    assert (20 - first, last - 20) == (DECODER_LOOKBACK_CONV, DECODER_LOOKAHEAD)


def test_the_defaults_cover_the_decoders_reach():
    stream = StreamSettings()
    crossfade = min(2, stream.lookahead_frames)
    # Every handed-out sample but the crossfaded ones sees its whole look-ahead; the crossfade
    # blends in the previous window's decode of its frames, which saw lookahead - 1 and - 2.
    assert stream.lookahead_frames >= DECODER_LOOKAHEAD
    assert crossfade == 2
    assert round(stream.context_seconds * 50) >= DECODER_LOOKBACK_CONV


@pytest.mark.parametrize("seed", [0, 1])
def test_streamed_audio_with_the_defaults_matches_the_whole_decode(codec, seed):
    stream = StreamSettings()
    model = as_musicgen(codec)
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, codec.config.codebook_size, (1, 4, 150), generator=generator)
    whole = decode_codes(model, codes)[0]
    streamed = stream_like_the_service(model, codes, stream)
    assert streamed.shape == whole.shape == (1, 150 * HOP)
    signal = whole - whole.mean()  # the random decoder's output sits on its last bias
    rms = float(np.sqrt(np.mean(signal**2)))
    error = np.abs(streamed - whole).max() / rms
    # Every sample within 1e-4 of the clip's RMS (-80 dB; measured about 1.2e-5 here). The
    # service's threshold is 1e-3 (-60 dB, docs/serving.md); this small random codec stays far
    # below it, so the test holds it to a tighter bound, one that a window without its left
    # context or with too short a look-ahead breaks.
    assert error < 1e-4, error
    cut = {"context_seconds": 0.0}
    no_context = stream_like_the_service(model, codes, stream.model_copy(update=cut))
    assert np.abs(no_context - whole).max() / rms > 1e-4  # about 1.1e-3
    short = {"lookahead_frames": DECODER_LOOKAHEAD - 1}
    no_lookahead = stream_like_the_service(model, codes, stream.model_copy(update=short))
    assert np.abs(no_lookahead - whole).max() / rms > 5 * error  # about 1.2e-4
