"""Streamed audio against the whole-clip decode, by left context and lookahead (EnCodec 32 kHz).

    python bench/stream_context.py                          # 8 s clip, the grid below
    python bench/stream_context.py --contexts 0 0.2 1.0 --lookaheads 3 --seconds 4
    python bench/stream_context.py --forget-bias 1          # a codec LSTM with a longer memory
    python bench/stream_context.py --codec /models/encodec_32khz   # trained weights, if at hand

The codec is a random-weight EnCodec of musicgen-small's shape (``encodec_32khz_config``: 32 kHz,
4 codebooks of 2048, 50 frames/s, non-causal convolutions with reflect padding, a 2-layer LSTM),
its codebooks made usable by ``init_codebooks``. The codes are uniform random (``--codes
uniform``: every frame a new code, as sampled tokens change) or the codec's own encoding of a
synthetic piece (``--codes piece``: plucked notes and noise-burst drums). ``CodecStreamer`` (the
service's streamer with the serve defaults' chunk and first chunk, crossfade
``min(2, lookahead)`` as the service sets it) is fed those codes in MusicGen's delay pattern,
one step at a time, and its chunks are compared with one decode of the whole clip (what the
service stores).

One JSON object per line:

- ``receptive_field``: the decoder's convolutional reach in codec frames, from the config's
  kernel sizes, strides and dilations (the LSTM is causal: it adds memory on the left only),
  and the same read from the decoder's gradient.
- ``reference``: the whole-clip decode: its RMS, peak and CPU seconds per second of audio.
- one ``stream`` line per (context, lookahead): errors relative to the clip's RMS (around its
  mean: the random decoder sits on a DC offset), at chunk borders (from one frame before a
  border to one frame after its crossfade) and inside chunks; the error per frame after a
  border (the LSTM's memory shows as its decay); the error against the signal in a bass, a
  middle and a treble band (``band_error_db``); spectral flux at the borders of the streamed
  audio against the whole decode's at the same samples (a click is a flux spike at a border);
  the codec frames decoded per frame streamed and the codec CPU seconds (one thread,
  ``time.process_time``) per second of streamed audio, side by side.

Random weights are a proxy: the convolutional reach is the architecture's, but how long the
LSTM remembers depends on its weights (random ones forget fast: forget gates near 0.5), so
``--forget-bias`` raises the LSTM's forget-gate biases to model a codec that remembers longer,
and ``--codec`` runs the same measurement on a saved trained EnCodec.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from transformers import EncodecModel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from musicgen_train.generation.long_form import seam_flux  # noqa: E402
from musicgen_train.generation.streaming import CodecStreamer, decode_codes  # noqa: E402
from musicgen_train.model.shapes import encodec_32khz_config  # noqa: E402
from musicgen_train.model.tiny import init_codebooks  # noqa: E402

N_FFT, FLUX_HOP = 512, 128  # 16 ms windows, 4 ms apart: a click spreads over few frames
BANDS = [(20, 200), (200, 2000), (2000, 16000)]  # Hz: bass, middle, treble


def band_error_db(error: np.ndarray, signal: np.ndarray, rate: int) -> list[float]:
    """The error's energy against the signal's in each band of ``BANDS``, in dB: an error that
    is small overall can still sit where the signal is quiet."""
    freqs = np.fft.rfftfreq(error.size, 1 / rate)
    error_power = np.abs(np.fft.rfft(error)) ** 2
    signal_power = np.abs(np.fft.rfft(signal)) ** 2
    out = []
    for low, high in BANDS:
        band = (freqs >= low) & (freqs < high)
        ratio = error_power[band].sum() / max(signal_power[band].sum(), 1e-30)
        out.append(round(float(10 * np.log10(max(ratio, 1e-30))), 1))
    return out


def decoder_reach(config) -> dict[str, int]:
    """The convolutional reach of EnCodec's decoder (transformers' ``EncodecDecoder``) in codec
    frames: how many frames before and after its own frame any output sample depends on.

    Walks the decoder backwards from one output frame's samples to the latent frames, interval
    by interval: a non-causal convolution of effective kernel ``(k-1)d+1`` pads ``total//2`` on
    the right and the rest on the left, so output ``t`` reads ``[t - left, t + right]``; a
    transposed convolution (kernel ``2r``, stride ``r``) trims ``total//2`` on the right and
    the rest on the left of its ``k - r`` overlap, so output ``t`` reads the inputs ``i`` with
    ``i*r <= t + trim_left <= i*r + 2r - 1``. ``pre_lstm`` is the first convolution's reach
    (it feeds the LSTM), ``post_lstm`` the reach of the layers after the LSTM.
    """
    if config.use_causal_conv:
        raise ValueError("a causal codec looks back only; this walk is for non-causal ones")

    def conv(kernel: int, dilation: int = 1) -> tuple[str, int, int]:
        total = (kernel - 1) * dilation
        return ("conv", total - total // 2, total // 2)

    post: list[tuple] = []  # the layers after the LSTM, input to output
    for ratio in config.upsampling_ratios:
        post.append(("up", ratio, 2 * ratio))
        for j in range(config.num_residual_layers):
            post.append(conv(config.residual_kernel_size, config.dilation_growth_rate**j))
    post.append(conv(config.last_kernel_size))

    def back(layers: list[tuple], lo: int, hi: int) -> tuple[int, int]:
        for layer in reversed(layers):
            if layer[0] == "conv":
                lo, hi = lo - layer[1], hi + layer[2]
            else:
                _, stride, kernel = layer
                total = kernel - stride
                trim_left = total - total // 2
                lo = math.ceil((lo + trim_left - kernel + 1) / stride)
                hi = (hi + trim_left) // stride
        return lo, hi

    hop = math.prod(config.upsampling_ratios)
    frame = 10  # any frame away from the ends
    lo, hi = back(post, frame * hop, (frame + 1) * hop - 1)
    _, pre_left, pre_right = conv(config.kernel_size)
    return {
        "post_lstm_left": frame - lo,
        "post_lstm_right": hi - frame,
        "pre_lstm_left": pre_left,
        "pre_lstm_right": pre_right,
        "right": hi - frame + pre_right,  # frames after its own that a sample depends on
        "left_conv": frame - lo + pre_left,  # frames before, through convolutions alone
    }


def reach_by_gradient(codec, frame: int = 20, frames: int = 40) -> dict[str, int]:
    """The same reach read from the decoder's gradient: the latent frames that one frame's
    samples depend on, with the LSTM and with the LSTM replaced by its skip path alone."""
    layers = codec.decoder.layers
    (at,) = [i for i, layer in enumerate(layers) if type(layer).__name__ == "EncodecLSTM"]
    hop = math.prod(codec.config.upsampling_ratios)

    def touched() -> np.ndarray:
        latent = torch.randn(1, codec.config.hidden_size, frames, requires_grad=True)
        codec.decoder(latent)[..., frame * hop : (frame + 1) * hop].sum().backward()
        return np.flatnonzero(latent.grad.abs().sum(dim=(0, 1)).numpy() > 0)

    with_lstm = touched()
    lstm, layers[at] = layers[at], torch.nn.Identity()
    try:
        conv_only = touched()
    finally:
        layers[at] = lstm
    return {
        "right_by_gradient": int(with_lstm[-1]) - frame,
        "left_by_gradient_with_lstm": frame - int(with_lstm[0]),  # all of them: the LSTM
        "left_conv_by_gradient": frame - int(conv_only[0]),
    }


def build_codec(
    seed: int, forget_bias: float | None, path: str | None = None, codebook_seconds: float = 4.0
):
    """The random-weight codec of musicgen-small's shape, or a saved EnCodec from ``path`` (a
    local folder, e.g. ``facebook/encodec_32khz`` saved with ``save_pretrained``)."""
    if path is not None:
        codec = EncodecModel.from_pretrained(path).eval()
        config = codec.config
    else:
        config = encodec_32khz_config()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            codec = EncodecModel(config).eval()
            init_codebooks(codec, seconds=codebook_seconds)
    if forget_bias is not None:
        with torch.no_grad():
            for name, bias in codec.decoder.named_parameters():
                if ".lstm.bias_" in name:  # gates i, f, g, o: the second quarter is f
                    quarter = bias.shape[0] // 4
                    bias[quarter : 2 * quarter] = forget_bias / 2  # ih + hh
    # What CodecStreamer and decode_codes read from a MusicGen model.
    return SimpleNamespace(
        audio_encoder=codec,
        device=torch.device("cpu"),
        decoder=SimpleNamespace(num_codebooks=4),
        config=SimpleNamespace(audio_encoder=config, decoder=SimpleNamespace(audio_channels=1)),
    )


def synthetic_piece(seconds: float, rate: int, seed: int) -> torch.Tensor:
    """Plucked notes (a pentatonic scale, 4 harmonics, exponential decay) on eighth notes at
    120 bpm, with a noise-burst drum on each beat: ``[1, 1, samples]``."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    audio = np.zeros_like(t)
    scale = 220.0 * 2 ** (np.array([0, 2, 4, 7, 9, 12, 14, 16]) / 12)
    for start in np.arange(0, seconds, 0.25):
        f0, local = rng.choice(scale), t[t >= start] - start
        note = sum(np.sin(2 * np.pi * f0 * h * local) / h for h in range(1, 5))
        audio[t >= start] += 0.3 * note * np.exp(-local / 0.3)
    for start in np.arange(0, seconds, 0.5):
        n = min(int(0.08 * rate), len(t) - int(start * rate))
        burst = rng.standard_normal(n) * np.exp(-np.arange(n) / (0.02 * rate))
        audio[int(start * rate) : int(start * rate) + n] += 0.4 * burst
    audio = 0.5 * audio / np.abs(audio).max()
    return torch.tensor(audio, dtype=torch.float32).reshape(1, 1, -1)


@torch.inference_mode()
def encode(model, audio: torch.Tensor) -> torch.Tensor:
    codec = model.audio_encoder
    codes = codec.encode(audio, bandwidth=codec.config.target_bandwidths[0]).audio_codes
    return codes[0]  # [batch, K, frames]


def stream(model, codes: torch.Tensor, **options) -> tuple[np.ndarray, list[int], list[int]]:
    """Feed ``codes`` ``[1, K, frames]`` to a CodecStreamer in the delay pattern; returns the
    streamed audio ``[channels, samples]``, its chunk lengths and each window's frame count."""
    k, frames = codes.shape[1], codes.shape[2]
    hop = math.prod(model.config.audio_encoder.upsampling_ratios)
    pieces: list[np.ndarray] = []
    streamer = CodecStreamer(
        model,
        batch_size=1,
        max_new_tokens=frames + k - 1,
        num_samples=frames * hop,
        on_audio=lambda _i, audio: pieces.append(audio),
        **options,
    )
    windows: list[int] = []
    decode = streamer._decode

    def counted(start: int, stop: int) -> np.ndarray:
        windows.append(stop - start)
        return decode(start, stop)

    streamer._decode = counted
    streamer.put(torch.zeros(1, k, dtype=torch.long))  # the start tokens
    for step in range(1, frames + k):
        column = torch.zeros(1, k, dtype=torch.long)
        for book in range(k):
            frame = step - book - 1
            if 0 <= frame < frames:
                column[0, book] = codes[0, book, frame]
        streamer.put(column)
    streamer.end()
    return np.concatenate(pieces, axis=-1), [p.shape[-1] for p in pieces], windows


def compare(streamed, reference, chunks, hop, crossfade, rms, dc, rate) -> dict:
    """Errors relative to the clip's RMS: at the borders and inside the chunks, per frame after
    a border, and the spectral flux at the borders against the whole decode's."""
    signed = (streamed - reference).reshape(-1)
    error = np.abs(signed)
    borders = np.cumsum(chunks)[:-1]
    near = np.zeros(error.shape, dtype=bool)
    for border in borders:
        near[max(0, border - hop) : border + crossfade + hop] = True
    # Error per frame after a border, averaged over the borders (RMS), relative to the clip RMS.
    period = int(np.median(chunks[1:-1])) if len(chunks) > 2 else chunks[0]
    profile = []
    for offset in range(period // hop):
        spans = [error[b + offset * hop : b + (offset + 1) * hop] for b in borders[:-1]]
        profile.append(float(np.sqrt(np.mean(np.concatenate(spans) ** 2)) / rms))
    flux_stream = seam_flux(streamed.reshape(-1) - dc, list(borders), N_FFT, FLUX_HOP)
    flux_ref = seam_flux(reference.reshape(-1) - dc, list(borders), N_FFT, FLUX_HOP)
    return {
        "max_abs": float(error.max()),
        "max_rel": float(error.max() / rms),
        "rms_rel": float(np.sqrt(np.mean(error**2)) / rms),
        "border_max_rel": float(error[near].max() / rms),
        "border_rms_rel": float(np.sqrt(np.mean(error[near] ** 2)) / rms),
        "inside_max_rel": float(error[~near].max() / rms),
        "inside_rms_rel": float(np.sqrt(np.mean(error[~near] ** 2)) / rms),
        "worst_db": float(20 * np.log10(max(error.max(), 1e-12) / rms)),
        "band_error_db": band_error_db(signed, reference.reshape(-1) - dc, rate),
        "rel_by_frame_after_border": [float(f"{v:.2e}") for v in profile],
        "flux_border_stream": flux_stream["seam_flux"],
        "flux_border_reference": flux_ref["seam_flux"],
        "flux_border_ratio": flux_stream["seam_flux"] / flux_ref["seam_flux"],
        "flux_ratio_stream": flux_stream["ratio"],
        "flux_ratio_reference": flux_ref["ratio"],
        "borders": len(borders),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--contexts", type=float, nargs="+", default=[0, 0.1, 0.2, 0.3, 0.5, 1.0])
    parser.add_argument("--lookaheads", type=int, nargs="+", default=[2, 3, 5])
    parser.add_argument("--chunk-seconds", type=float, default=0.5)
    parser.add_argument("--first-chunk-seconds", type=float, default=0.1)
    parser.add_argument("--forget-bias", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--codes", choices=["uniform", "piece"], default="uniform")
    parser.add_argument("--codec", default=None, help="a saved EnCodec folder (trained weights)")
    # init_codebooks' signal: at 4 s (200 frames, fewer than 2048 codes) every frame becomes a
    # code of the first codebook, the residual is zero and the other three codebooks stay zero.
    parser.add_argument("--codebook-seconds", type=float, default=4.0)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)

    model = build_codec(args.seed, args.forget_bias, args.codec, args.codebook_seconds)
    config = model.config.audio_encoder
    hop = math.prod(config.upsampling_ratios)
    rate = config.sampling_rate // hop
    reach = {**decoder_reach(config), **reach_by_gradient(model.audio_encoder)}
    print(json.dumps({"what": "receptive_field", "frame_rate": rate, **reach}))

    if args.codes == "piece":
        codes = encode(model, synthetic_piece(args.seconds, config.sampling_rate, args.seed))
    else:  # every frame a new code in each codebook, as sampled tokens change
        frames = round(args.seconds * rate)
        generator = torch.Generator().manual_seed(args.seed)
        codes = torch.randint(0, config.codebook_size, (1, 4, frames), generator=generator)
    frames = codes.shape[-1]
    cpu, wall = time.process_time(), time.perf_counter()
    reference = decode_codes(model, codes)[0]
    ref_cpu, ref_wall = time.process_time() - cpu, time.perf_counter() - wall
    # The random decoder's output sits on a DC offset (its last bias); an error is heard
    # against the signal, so errors are relative to the RMS around the mean.
    dc = float(reference.mean())
    rms, peak = float(reference.std()), float(np.abs(reference - dc).max())
    seconds = frames / rate
    print(
        json.dumps(
            {
                "what": "reference",
                "frames": frames,
                "seconds": seconds,
                "codes": args.codes,
                "dc": dc,
                "rms": rms,
                "peak": peak,
                "forget_bias": args.forget_bias,
                "cpu_per_audio_second": ref_cpu / seconds,
                "wall_per_audio_second": ref_wall / seconds,
            }
        ),
        flush=True,
    )
    for context in args.contexts:
        for lookahead in args.lookaheads:
            crossfade = min(2, lookahead)
            cpu, wall = time.process_time(), time.perf_counter()
            streamed, chunks, windows = stream(
                model,
                codes,
                chunk_frames=max(1, round(args.chunk_seconds * rate)),
                first_chunk_frames=max(1, round(args.first_chunk_seconds * rate)),
                context_frames=round(context * rate),
                lookahead_frames=lookahead,
                crossfade_frames=crossfade,
            )
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            assert streamed.shape == reference.shape, (streamed.shape, reference.shape)
            row = {
                "what": "stream",
                "context_seconds": context,
                "context_frames": round(context * rate),
                "lookahead_frames": lookahead,
                "crossfade_frames": crossfade,
                "forget_bias": args.forget_bias,
                **compare(
                    streamed, reference, chunks, hop, crossfade * hop, rms, dc, config.sampling_rate
                ),
                "frames_decoded_per_frame": sum(windows) / frames,
                "cpu_per_audio_second": cpu / seconds,
                "wall_per_audio_second": wall / seconds,
                "cpu_vs_whole_decode": cpu / ref_cpu,
            }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
