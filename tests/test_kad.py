"""KAD against an explicit double loop (kadtk 1.1.0's definition, written out independently)."""

import math

import numpy as np
import pytest

from musicgen_train.evaluation import kernel_audio_distance
from musicgen_train.evaluation.kad import KadSets, bootstrap_kad, median_pairwise_distance


def kad_double_loop(x, y):
    """kadtk's KAD, element by element: Gaussian kernel, bandwidth = lower median of the pairwise
    distances of y (torch.median), gamma = 1 / (2 h^2 + 1e-8), unbiased MMD^2, times 100."""
    distances = sorted(math.dist(y[i], y[j]) for i in range(len(y)) for j in range(i + 1, len(y)))
    h = distances[(len(distances) - 1) // 2]
    gamma = 1.0 / (2.0 * h * h + 1e-8)

    def k(a, b):
        return math.exp(-gamma * sum((p - q) ** 2 for p, q in zip(a, b, strict=True)))

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return 100.0 * (xx + yy - 2.0 * xy)


def test_kad_matches_the_double_loop():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(23, 5))
    y = rng.normal(size=(18, 5)) * 1.3 + 0.4
    expected = kad_double_loop(x.tolist(), y.tolist())
    assert expected > 1.0
    assert kernel_audio_distance(x, y) == pytest.approx(expected, rel=1e-10, abs=1e-12)
    # Even count of pairs (17 frames: 136 pairs): the LOWER middle value, as torch.median.
    y17 = y[:17]
    assert kernel_audio_distance(x, y17) == pytest.approx(
        kad_double_loop(x.tolist(), y17.tolist()), rel=1e-10
    )


def test_kad_blocks_and_clip_sums_give_the_whole_set_value():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1500, 4))  # more than one block of 1024 rows
    songs = [rng.normal(size=(int(n), 4)) + 0.2 for n in rng.integers(1, 90, size=30)]
    y = np.concatenate(songs)
    sets = KadSets(x, songs)
    assert sets.value() == pytest.approx(kernel_audio_distance(x, y), rel=1e-10)
    # A bootstrap multiset = the literal concatenation with repeated clips.
    counts = np.array([2, 0, 1] * 10)
    literal = np.concatenate([s for s, c in zip(songs, counts, strict=True) for _ in range(c)])
    assert sets.value(counts) == pytest.approx(
        kernel_audio_distance(x, literal, bandwidth=sets.bandwidth), rel=1e-10
    )


def test_median_pairwise_distance_exact_and_sampled():
    rng = np.random.default_rng(2)
    y = rng.normal(size=(300, 8))
    d = np.sqrt(((y[:, None] - y[None]) ** 2).sum(-1))[np.triu_indices(300, 1)]
    assert median_pairwise_distance(y) == pytest.approx(np.sort(d)[(d.size - 1) // 2])
    sampled = median_pairwise_distance(y, max_pairs=20_000, seed=0)
    assert sampled == pytest.approx(np.median(d), rel=0.02)


def test_kad_is_unbiased_where_fad_is_not():
    """Same distribution: KAD's expectation is 0 at any n (unbiased MMD^2 with the bandwidth
    fixed), the mean over repetitions sits within its standard error of 0."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 6))
    values = [kernel_audio_distance(x, rng.normal(size=(60, 6)), bandwidth=3.3) for _ in range(60)]
    mean, sem = np.mean(values), np.std(values, ddof=1) / np.sqrt(len(values))
    assert abs(mean) < 3 * sem + 1e-9


def test_bootstrap_kad_interval_holds_the_estimate_and_is_seeded():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(200, 4))
    songs = [rng.normal(size=(10, 4)) + 0.5 for _ in range(20)]
    result = bootstrap_kad(x, songs, samples=100, seed=0)
    assert result.value == pytest.approx(kernel_audio_distance(x, np.concatenate(songs)))
    low, high = result.interval
    assert low < result.value < high
    assert bootstrap_kad(x, songs, samples=100, seed=0).interval == result.interval
    assert result.frames == 200 and result.reference_frames == 200


def test_kad_bad_input_is_one_clear_error():
    with pytest.raises(ValueError, match="dimension 3 cannot be compared"):
        kernel_audio_distance(np.zeros((5, 4)), np.ones((5, 3)))
    with pytest.raises(ValueError, match="at least 2 generated frames"):
        kernel_audio_distance(np.zeros((5, 4)), np.ones((1, 4)))


def test_kad_matches_kadtks_float32_torch_path():
    """kadtk computes in float32 with torch.pdist / torch.median and squared-norm expansions;
    written out here with torch, our float64 value agrees to float32 round-off."""
    import torch

    rng = np.random.default_rng(5)
    x = torch.tensor(rng.normal(size=(300, 16)), dtype=torch.float32)
    y = torch.tensor(rng.normal(size=(250, 16)) * 1.1 + 0.1, dtype=torch.float32)
    h = torch.median(torch.pdist(y)).item()
    gamma = 1 / (2 * h**2 + 1e-8)

    def mean_kernel(a, b, exclude_diagonal):
        d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T
        k = torch.exp(-gamma * d2)
        if exclude_diagonal:
            k = k - torch.diag(torch.diagonal(k))
            return k.sum() / (len(a) * (len(a) - 1))
        return k.mean()

    expected = 100 * (
        mean_kernel(x, x, True) + mean_kernel(y, y, True) - 2 * mean_kernel(x, y, False)
    )
    assert kernel_audio_distance(x.numpy(), y.numpy()) == pytest.approx(
        float(expected), rel=2e-3, abs=2e-4
    )
