"""Fréchet distance: closed forms, textbook sqrtm, hard covariances, FAD-inf, intervals."""

import numpy as np
import pytest
import scipy.linalg

from musicgen_train.evaluation import (
    Statistics,
    bootstrap_fad,
    fad_inf,
    frechet_distance,
    load_statistics,
    per_song_fad,
    save_statistics,
    statistics_from_embeddings,
)
from musicgen_train.evaluation.intervals import bootstrap_mean


def textbook_frechet(mu1, s1, mu2, s2) -> float:
    """The formula as papers write it, with scipy's general matrix square root."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * np.real(covmean)))


def random_covariance(rng, dim, frames=None):
    frames = frames or 4 * dim
    return np.cov(rng.normal(size=(frames, dim)) @ rng.normal(size=(dim, dim)), rowvar=False)


def test_identical_gaussians_are_at_distance_zero():
    rng = np.random.default_rng(0)
    mu, cov = rng.normal(size=16), random_covariance(rng, 16)
    assert frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-8)


def test_diagonal_covariances_match_the_closed_form():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.1, 4, size=32), rng.uniform(0.1, 4, size=32)
    mu1, mu2 = rng.normal(size=32), rng.normal(size=32)
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2) + np.sum((mu1 - mu2) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_only_the_means_differ():
    cov = random_covariance(np.random.default_rng(2), 8)
    mu1, mu2 = np.zeros(8), np.full(8, 0.5)
    assert frechet_distance(mu1, cov, mu2, cov) == pytest.approx(8 * 0.25, abs=1e-8)


def test_commuting_covariances_scaled():
    # S2 = 4 S1: tr(S1 + 4 S1 - 2 * 2 S1) = tr(S1).
    cov = random_covariance(np.random.default_rng(3), 10)
    assert frechet_distance(np.zeros(10), cov, np.zeros(10), 4 * cov) == pytest.approx(
        np.trace(cov), rel=1e-9
    )


@pytest.mark.parametrize("dim", [4, 64, 128])
def test_matches_scipy_textbook_formula_on_well_conditioned_data(dim):
    rng = np.random.default_rng(dim)
    mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
    s1, s2 = random_covariance(rng, dim), random_covariance(rng, dim)
    ours = frechet_distance(mu1, s1, mu2, s2)
    assert ours == pytest.approx(textbook_frechet(mu1, s1, mu2, s2), rel=1e-7)


def test_rank_deficient_covariances_stay_real_finite_and_non_negative():
    rng = np.random.default_rng(4)
    dim = 128
    for frames in (2, 3, 10, 50):  # fewer frames than dimensions: rank <= frames - 1
        a = statistics_from_embeddings(rng.normal(size=(frames, dim)))
        b = statistics_from_embeddings(rng.normal(size=(frames, dim)) + 0.1)
        assert np.linalg.matrix_rank(a.cov) < dim
        value = frechet_distance(a.mu, a.cov, b.mu, b.cov)
        assert isinstance(value, float) and np.isfinite(value) and value >= 0
        # The same rank-deficient statistics against themselves: exactly (or nearly) zero.
        assert frechet_distance(a.mu, a.cov, a.mu, a.cov) == pytest.approx(0.0, abs=1e-7)


def test_ill_conditioned_covariances_stay_real_finite_and_non_negative():
    rng = np.random.default_rng(5)
    dim = 64
    basis, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    spectrum = np.logspace(0, -14, dim)  # condition number 1e14
    s1 = (basis * spectrum) @ basis.T
    s2 = (basis * spectrum[::-1]) @ basis.T
    value = frechet_distance(np.zeros(dim), s1, np.zeros(dim), s2)
    expected = np.sum((np.sqrt(spectrum) - np.sqrt(spectrum[::-1])) ** 2)  # they commute
    assert np.isfinite(value) and value >= 0
    assert value == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(np.zeros(dim), s1, np.zeros(dim), s1) == pytest.approx(0, abs=1e-9)


def test_bad_inputs_are_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="differ in dimension"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="sigma2 must be a 3x3"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.array([0, np.nan]), np.eye(2), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="at least 2"):
        statistics_from_embeddings(np.zeros((1, 8)))


def test_statistics_are_float64_mean_and_unbiased_covariance():
    frames = np.random.default_rng(6).normal(size=(40, 5)).astype(np.float32)
    stats = statistics_from_embeddings(frames)
    assert stats.mu.dtype == np.float64 and stats.cov.dtype == np.float64
    centered = frames.astype(np.float64) - frames.mean(axis=0, dtype=np.float64)
    np.testing.assert_allclose(stats.cov, centered.T @ centered / 39, rtol=1e-10)
    assert stats.count == 40


def test_npz_round_trip_uses_fadtk_keys(tmp_path):
    rng = np.random.default_rng(7)
    stats = statistics_from_embeddings(rng.normal(size=(30, 6)), {"embedder": "vggish"})
    path = save_statistics(tmp_path / "ref.npz", "vggish", stats)
    save_statistics(path, "logmel", statistics_from_embeddings(rng.normal(size=(30, 4))))
    with np.load(path) as data:
        assert {"vggish.mu", "vggish.cov", "logmel.mu", "logmel.cov"} <= set(data.files)
    loaded = load_statistics(path, ["clap", "vggish"])
    np.testing.assert_array_equal(loaded.mu, stats.mu)
    np.testing.assert_array_equal(loaded.cov, stats.cov)
    assert loaded.count == 30 and loaded.identity == {"embedder": "vggish"}
    with pytest.raises(KeyError, match="holds"):
        load_statistics(path, "encodec")


def test_npz_written_as_fadtk_writes_it_loads(tmp_path):
    # fadtk: np.savez(path, **{f"{model.name}.mu": mu, f"{model.name}.cov": cov})
    mu, cov = np.arange(3.0), np.eye(3)
    np.savez(tmp_path / "fma_pop.npz", **{"encodec-emb.mu": mu, "encodec-emb.cov": cov})
    loaded = load_statistics(tmp_path / "fma_pop.npz", ["encodec", "encodec-emb"])
    np.testing.assert_array_equal(loaded.mu, mu)


def _songs(rng, count, frames, dim, shift=0.0):
    return [rng.normal(size=(frames, dim)) + shift for _ in range(count)]


def test_per_song_fad_is_none_for_songs_without_a_covariance():
    rng = np.random.default_rng(8)
    reference = statistics_from_embeddings(rng.normal(size=(200, 4)))
    scores = per_song_fad([rng.normal(size=(20, 4)), rng.normal(size=(1, 4))], reference)
    assert scores[0] is not None and scores[0] >= 0 and scores[1] is None


def test_fad_inf_recovers_the_large_sample_limit():
    # Two identical Gaussians: FAD(n) ~ c / n, so the intercept is near 0 and far below FAD(500).
    rng = np.random.default_rng(9)
    dim = 8
    reference = Statistics(np.zeros(dim), np.eye(dim), 0)
    frames = rng.normal(size=(5000, dim))
    result = fad_inf(frames, reference, min_n=500, steps=25, seed=0)
    fad_500 = result.points[0][1]
    assert len(result.points) == 25 and result.points[-1][0] == 5000
    assert abs(result.value) < 0.25 * fad_500
    assert result.slope > 0 and result.r2 > 0.5
    assert fad_inf(frames, reference, seed=0).value == result.value  # seeded
    with pytest.raises(ValueError, match="more than 500"):
        fad_inf(frames[:100], reference)


def test_bootstrap_interval_contains_the_estimate_and_is_seeded():
    rng = np.random.default_rng(10)
    reference = statistics_from_embeddings(rng.normal(size=(500, 6)))
    songs = _songs(rng, 20, 10, 6, shift=0.3)
    value, (low, high) = bootstrap_fad(songs, reference, samples=200, seed=1)
    assert low <= value <= high and low < high
    assert bootstrap_fad(songs, reference, samples=200, seed=1) == (value, (low, high))
    concatenated = statistics_from_embeddings(np.concatenate(songs))
    assert value == pytest.approx(
        frechet_distance(concatenated.mu, concatenated.cov, reference.mu, reference.cov)
    )


def test_bootstrap_mean_interval():
    values = np.random.default_rng(11).normal(0.3, 0.05, size=50)
    mean, (low, high) = bootstrap_mean(values, samples=2000, seed=0)
    assert mean == pytest.approx(values.mean())
    assert low < mean < high
    half_width = 1.96 * values.std(ddof=1) / np.sqrt(50)  # the normal-theory interval
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.2)


def fadtk_fad_inf(frames, mu_bg, cov_bg, rng, min_n=500, steps=25):
    """fadtk 1.1.0's score_inf, re-written: subsets drawn WITH replacement, textbook FD with
    scipy's sqrtm, np.polyfit of FAD against 1/n."""
    import scipy.linalg

    ns = [int(n) for n in np.linspace(min_n, len(frames), steps)]
    results = []
    for n in ns:
        subset = frames[rng.choice(frames.shape[0], size=n, replace=True)]
        mu, cov = np.mean(subset, axis=0), np.cov(subset, rowvar=False)
        covmean = np.real(scipy.linalg.sqrtm(cov_bg @ cov))
        diff = mu_bg - mu
        results.append(diff @ diff + np.trace(cov_bg) + np.trace(cov) - 2 * np.trace(covmean))
    xs = 1 / np.array(ns)
    slope, intercept = np.polyfit(xs, results, 1)
    return intercept, slope


def test_fad_inf_fadtk_sampling_reproduces_fadtk_with_the_same_draws():
    rng = np.random.default_rng(10)
    dim = 6
    reference = statistics_from_embeddings(rng.normal(size=(3000, dim)))
    frames = rng.normal(size=(2000, dim)) * 1.2 + 0.3
    ours = fad_inf(frames, reference, seed=5, sampling="fadtk")
    expected, slope = fadtk_fad_inf(frames, reference.mu, reference.cov, np.random.default_rng(5))
    assert ours.value == pytest.approx(expected, rel=1e-9)
    assert ours.slope == pytest.approx(slope, rel=1e-9)
    assert ours.sampling == "fadtk" and ours.warning is None and len(ours.points) == 25
    with pytest.raises(ValueError, match="not one of"):
        fad_inf(frames, reference, sampling="bootstrap")


def test_fad_inf_samplings_differ_as_measured_and_small_sets_warn():
    # Known FD: identical Gaussians, FD = 0. With replacement, duplicates shrink the covariance
    # rank and add bias that 1/n does not remove: fadtk's intercept sits above ours on average.
    dim = 16
    reference = Statistics(np.zeros(dim), np.eye(dim), 0)
    ours, fadtk = [], []
    for seed in range(6):
        frames = np.random.default_rng(100 + seed).normal(size=(1200, dim))
        ours.append(fad_inf(frames, reference, seed=seed).value)
        fadtk.append(fad_inf(frames, reference, seed=seed, sampling="fadtk").value)
    assert np.mean(fadtk) > np.mean(ours) + 0.05
    assert abs(np.mean(ours)) < 0.05
    small = fad_inf(np.random.default_rng(1).normal(size=(700, dim)), reference)
    assert small.warning is not None and "700" in small.warning and "< 1000" in small.warning
