"""Log-mel spectrograms (Google's VGGish front end) and the weight-free log-mel baseline embedder.

The front end follows ``mel_features.py`` of Google's VGGish release: periodic Hann window, FFT
size the next power of two, magnitude spectrum, HTK mel scale (1127 ln(1 + f/700)) with
triangular bands between ``fmin`` and ``fmax`` and the DC bin zeroed, then ``log(mel + offset)``.
"""

from __future__ import annotations

import numpy as np

from musicgen_train.evaluation.embedder_base import Embedder


def frame(data: np.ndarray, window: int, hop: int) -> np.ndarray:
    """``[n, ...]`` -> ``[frames, window, ...]``: whole windows only, as Google's ``frame``."""
    count = 1 + (data.shape[0] - window) // hop
    if count < 1:
        return np.zeros((0, window, *data.shape[1:]), dtype=data.dtype)
    index = np.arange(window)[None, :] + hop * np.arange(count)[:, None]
    return data[index]


def hertz_to_mel(hertz):
    return 1127.0 * np.log(1.0 + np.asarray(hertz, dtype=np.float64) / 700.0)


def mel_matrix(num_bins: int, spectrum_bins: int, sample_rate: int, fmin: float, fmax: float):
    """``[spectrum_bins, num_bins]`` triangular mel weights (Google's spectrogram_to_mel_matrix)."""
    bins_mel = hertz_to_mel(np.linspace(0.0, sample_rate / 2, spectrum_bins))
    edges = np.linspace(hertz_to_mel(fmin), hertz_to_mel(fmax), num_bins + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel[:, None] - lower) / (center - lower)
    falling = (upper - bins_mel[:, None]) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0  # the DC bin carries no pitch information
    return weights


def log_mel_spectrogram(
    wave: np.ndarray,
    sample_rate: int,
    *,
    window_seconds: float = 0.025,
    hop_seconds: float = 0.010,
    num_bins: int = 64,
    fmin: float = 125.0,
    fmax: float = 7500.0,
    log_offset: float = 0.01,
) -> np.ndarray:
    """Mono samples -> ``[frames, num_bins]`` log-mel energies (VGGish defaults)."""
    window = int(round(sample_rate * window_seconds))
    hop = int(round(sample_rate * hop_seconds))
    fft_size = 2 ** int(np.ceil(np.log2(window)))
    hann = 0.5 - 0.5 * np.cos(2 * np.pi / window * np.arange(window))  # periodic Hann
    frames = frame(np.asarray(wave, dtype=np.float64), window, hop) * hann
    spectrum = np.abs(np.fft.rfft(frames, fft_size))
    mel = spectrum @ mel_matrix(num_bins, spectrum.shape[1], sample_rate, fmin, fmax)
    return np.log(mel + log_offset)


class LogMelEmbedder(Embedder):
    """Mean and standard deviation of 64 log-mel bands over 1 s windows (0.5 s hop): 128-d.

    No learned weights, so it runs anywhere, offline, in milliseconds. Its distances measure
    spectral similarity only and are NOT comparable to published FAD numbers (VGGish).
    """

    name = "logmel"
    sample_rate = 16_000
    window = (
        "1.0 s windows, 0.5 s hop; mean+std of 64 log-mel bands (25 ms / 10 ms STFT, "
        "60-7800 Hz) = 128-d"
    )
    comparable = False
    bands = 64
    frames_per_window = 100  # 1.0 s of 10 ms frames
    frames_per_hop = 50

    def embed_mono(self, wave: np.ndarray) -> np.ndarray:
        # Clips shorter than one window are zero-padded to one window rather than dropped.
        wave = np.pad(wave, (0, max(0, self.sample_rate + 240 - len(wave))))
        spectrogram = log_mel_spectrogram(
            wave, self.sample_rate, num_bins=self.bands, fmin=60.0, fmax=7800.0
        )
        windows = frame(spectrogram, self.frames_per_window, self.frames_per_hop)
        return np.concatenate([windows.mean(axis=1), windows.std(axis=1)], axis=1)
