"""Kernel Audio Distance (KAD; Chung et al. 2025, kadtk 1.1.0): an unbiased MMD^2 between sets.

KAD(reference X [m, d], generated Y [n, d]) = 100 * (mean_{i != j} k(x_i, x_j)
    + mean_{i != j} k(y_i, y_j) - 2 mean_{i, j} k(x_i, y_j)),

with the Gaussian kernel k(a, b) = exp(-|a - b|^2 / (2 h^2 + 1e-8)) and the bandwidth h the
median pairwise Euclidean distance of the EVALUATED (generated) set, as kadtk defines it (its
median is torch's: the lower middle value of an even count). The diagonals are left out (the
unbiased estimator), so unlike FAD the expected value does not depend on the number of frames
and a perfect generator scores about 0 (it can be slightly negative). No Gaussian assumption.

We compute in float64 and in blocks (kadtk: float32, whole matrices), so sets of any size fit in
memory; per clip-pair kernel sums are kept, so a bootstrap over clips costs no new kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from musicgen_train.evaluation.intervals import centered_interval

SCALE = 100.0  # kadtk's SCALE_FACTOR
EPS = 1e-8  # kadtk adds it to 2 h^2
EXACT_PAIRS = 20_000_000  # above this many pairs the median is taken on a seeded sample of pairs
BLOCK = 1024


def _frames(name: str, value) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} embeddings must be [frames, dim], got shape {array.shape}")
    if array.shape[0] < 2:
        raise ValueError(f"KAD needs at least 2 {name} frames, got {array.shape[0]}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} embeddings hold NaN or infinite values")
    return array


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d2, 0.0)


def _lower_median(values: np.ndarray) -> float:
    """torch.median's convention: the lower of the two middle values of an even count."""
    k = (values.size - 1) // 2
    return float(np.partition(values, k)[k])


def median_pairwise_distance(frames, *, max_pairs: int = EXACT_PAIRS, seed: int = 0) -> float:
    """Median Euclidean distance over all pairs i < j (kadtk's bandwidth rule).

    With more than ``max_pairs`` pairs, a seeded sample of ``max_pairs`` pairs is used instead.
    """
    frames = _frames("generated", frames)
    n = len(frames)
    if n * (n - 1) // 2 <= max_pairs:
        parts = []
        for start in range(0, n - 1, BLOCK):
            rows = frames[start : start + BLOCK]
            d2 = _squared_distances(rows, frames)
            i, j = np.nonzero(np.arange(n)[None, :] > np.arange(start, start + len(rows))[:, None])
            parts.append(np.sqrt(d2[i, j]))
        return _lower_median(np.concatenate(parts))
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, size=max_pairs)
    j = rng.integers(0, n - 1, size=max_pairs)
    j = j + (j >= i)  # never a point with itself
    distances = np.empty(max_pairs)
    for start in range(0, max_pairs, 1 << 20):  # 1 M pairs at a time: bounded memory
        a, b = i[start : start + (1 << 20)], j[start : start + (1 << 20)]
        distances[start : start + len(a)] = np.sqrt(((frames[a] - frames[b]) ** 2).sum(1))
    return _lower_median(distances)


def _block_sums(a: np.ndarray, a_bounds, b: np.ndarray, b_bounds, gamma: float) -> np.ndarray:
    """Sum of k(a_i, b_j) over each (group of a) x (group of b): ``[groups_a, groups_b]``."""
    out = np.zeros((len(a_bounds) - 1, len(b_bounds) - 1))
    starts_b = np.asarray(b_bounds[:-1])
    for start in range(0, len(a), BLOCK):
        stop = min(start + BLOCK, len(a))
        kernel = np.exp(-gamma * _squared_distances(a[start:stop], b))
        cols = np.add.reduceat(kernel, starts_b, axis=1)  # [rows, groups_b]
        groups = np.searchsorted(a_bounds, np.arange(start, stop), side="right") - 1
        np.add.at(out, groups, cols)
    return out


def _bounds(lengths) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def kernel_reference_mean(reference, gamma: float) -> float:
    """mean_{i != j} k(x_i, x_j) of the reference (the diagonal, k = 1, left out)."""
    x = _frames("reference", reference)
    total = _block_sums(x, [0, len(x)], x, [0, len(x)], gamma)[0, 0]
    return float((total - len(x)) / (len(x) * (len(x) - 1)))


def kernel_audio_distance(reference, generated, *, bandwidth: float | None = None) -> float:
    """KAD of ``generated`` against ``reference`` (``[frames, dim]`` each): kadtk 1.1.0's number.

    ``bandwidth`` defaults to the median pairwise distance of ``generated``.
    """
    x, y = _frames("reference", reference), _frames("generated", generated)
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"generated embeddings of dimension {y.shape[1]} cannot be compared with reference "
            f"embeddings of dimension {x.shape[1]}"
        )
    return KadSets(x, [y], bandwidth=bandwidth).value()


@dataclass
class KadResult:
    value: float
    interval: tuple[float, float]
    bandwidth: float
    frames: int
    reference_frames: int


class KadSets:
    """The kernel sums of one reference and a list of generated clips, computed once.

    ``value(counts)`` is the KAD of the multiset holding clip ``i`` ``counts[i]`` times: the
    full set (all ones, kadtk's number) or a bootstrap draw, without a new kernel evaluation.
    """

    def __init__(
        self,
        reference,
        songs: list[np.ndarray],
        *,
        bandwidth: float | None = None,
        reference_mean: float | None = None,
        seed: int = 0,
    ):
        x = _frames("reference", reference)
        songs = [np.asarray(s, dtype=np.float64).reshape(-1, x.shape[1]) for s in songs]
        songs = [s for s in songs if len(s)]
        y = _frames("generated", np.concatenate(songs) if songs else np.zeros((0, x.shape[1])))
        self.bandwidth = (
            float(bandwidth) if bandwidth is not None else median_pairwise_distance(y, seed=seed)
        )
        self.gamma = 1.0 / (2.0 * self.bandwidth**2 + EPS)
        self.lengths = np.array([len(s) for s in songs], dtype=np.float64)
        bounds = _bounds(self.lengths)
        self.kyy = _block_sums(y, bounds, y, bounds, self.gamma)  # [clips, clips]
        self.kxy = _block_sums(y, bounds, x, [0, len(x)], self.gamma)[:, 0]  # [clips]
        self.m = len(x)
        self.kxx = (
            kernel_reference_mean(x, self.gamma) if reference_mean is None else reference_mean
        )

    def value(self, counts=None) -> float:
        c = np.ones(len(self.lengths)) if counts is None else np.asarray(counts, dtype=np.float64)
        n = float(c @ self.lengths)
        # Pairs of positions in the multiset minus the n pairs of a position with itself (k = 1).
        kyy = (c @ self.kyy @ c - n) / (n * (n - 1))
        kxy = (c @ self.kxy) / (n * self.m)
        return SCALE * float(self.kxx + kyy - 2.0 * kxy)


def bootstrap_kad(
    reference,
    songs: list[np.ndarray],
    *,
    samples: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
    reference_mean: float | None = None,
) -> KadResult:
    """KAD of all ``songs`` and the spread of its bootstrap over clips (bandwidth held fixed)."""
    sets = KadSets(reference, songs, reference_mean=reference_mean, seed=seed)
    point = sets.value()
    rng = np.random.default_rng(seed)
    draws, clips = [], len(sets.lengths)
    for _ in range(samples):
        counts = np.bincount(rng.integers(0, clips, clips), minlength=clips)
        if counts @ sets.lengths >= 2:
            draws.append(sets.value(counts))
    return KadResult(
        point,
        centered_interval(point, np.asarray(draws), confidence),
        sets.bandwidth,
        int(sets.lengths.sum()),
        sets.m,
    )
