"""Fréchet distance between Gaussians fitted to embeddings: FAD, per-song FAD, FAD-inf, intervals.

FD = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2).

``scipy.linalg.sqrtm(S1 @ S2)`` is the textbook way to get the last term, but S1 S2 is not
symmetric: in floating point its square root picks up imaginary parts and the distance can come out
negative for ill-conditioned or rank-deficient covariances (fadtk#38, scipy#20178). S1 S2 is
similar to the symmetric positive semi-definite M = S1^1/2 S2 S1^1/2, so both have the same
eigenvalues and tr((S1 S2)^1/2) = sum(sqrt(eig(M))). Symmetric eigen-decompositions are real by
construction; eigenvalues that round to slightly below zero are clipped to zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from musicgen_train.evaluation.intervals import centered_interval


@dataclass
class Statistics:
    """Mean and covariance of a set of embedding frames (float64), and how many frames made them."""

    mu: np.ndarray
    cov: np.ndarray
    count: int
    identity: dict = field(default_factory=dict)  # the embedder that produced the frames
    _root: np.ndarray | None = field(default=None, repr=False, compare=False)

    def cov_root(self) -> np.ndarray:
        """cov^1/2, computed once: a reference is compared with many sets (bootstrap, per song)."""
        if self._root is None:
            self._root = psd_sqrt(_as_covariance("cov", self.cov, self.mu.shape[0]))
        return self._root


def _as_vector(name: str, value) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a vector, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds NaN or infinite values")
    return array


def _as_covariance(name: str, value, dim: int) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.shape != (dim, dim):
        raise ValueError(f"{name} must be a {dim}x{dim} matrix, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds NaN or infinite values")
    return (array + array.T) / 2  # a covariance is symmetric; remove round-off asymmetry


def psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix (eigenvalues >= 0)."""
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    roots = np.sqrt(np.clip(eigenvalues, 0.0, None))
    return (eigenvectors * roots) @ eigenvectors.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, root1=None) -> float:
    """tr((S1 S2)^1/2) through the symmetric M = S1^1/2 S2 S1^1/2 (same eigenvalues as S1 S2)."""
    root1 = psd_sqrt(sigma1) if root1 is None else root1
    middle = root1 @ sigma2 @ root1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2, *, root1=None) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2): real, finite and >= 0.

    ``root1`` may pass sigma1^1/2 when it is already known.
    """
    mu1, mu2 = _as_vector("mu1", mu1), _as_vector("mu2", mu2)
    if mu1.shape != mu2.shape:
        raise ValueError(f"mu1 and mu2 differ in dimension: {mu1.shape[0]} vs {mu2.shape[0]}")
    sigma1 = _as_covariance("sigma1", sigma1, mu1.shape[0])
    sigma2 = _as_covariance("sigma2", sigma2, mu1.shape[0])
    diff = mu1 - mu2
    distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2)
    distance -= 2.0 * trace_sqrt_product(sigma1, sigma2, root1)
    # Mathematically >= 0; cancellation between large traces can leave a tiny negative residue.
    return max(float(distance), 0.0)


def statistics_from_embeddings(frames, identity: dict | None = None) -> Statistics:
    """Mean and (unbiased, ``np.cov``) covariance of ``[frames, dim]`` embeddings, in float64."""
    frames = np.asarray(frames, dtype=np.float64)
    if frames.ndim != 2:
        raise ValueError(f"embeddings must be [frames, dim], got shape {frames.shape}")
    if frames.shape[0] < 2:
        raise ValueError(f"a covariance needs at least 2 embedding frames, got {frames.shape[0]}")
    if not np.all(np.isfinite(frames)):
        raise ValueError("embeddings hold NaN or infinite values")
    return Statistics(
        mu=frames.mean(axis=0),
        cov=np.atleast_2d(np.cov(frames, rowvar=False)),
        count=int(frames.shape[0]),
        identity=dict(identity or {}),
    )


def fad(stats: Statistics, reference: Statistics) -> float:
    """FAD of ``stats`` against ``reference`` (whose square root is computed once and kept)."""
    if stats.mu.shape != reference.mu.shape:
        raise ValueError(
            f"embeddings of dimension {stats.mu.shape[0]} cannot be compared with reference "
            f"statistics of dimension {reference.mu.shape[0]}"
        )
    return frechet_distance(
        reference.mu, reference.cov, stats.mu, stats.cov, root1=reference.cov_root()
    )


# --- reference statistics in fadtk's layout ---------------------------------------------------


def save_statistics(path: str | Path, name: str, stats: Statistics) -> Path:
    """Write (or add to) a ``.npz`` holding ``<name>.mu`` and ``<name>.cov``, as fadtk does.

    ``<name>.count`` and ``<name>.identity`` (JSON) ride along; fadtk ignores extra keys.
    """
    import json

    path = Path(path)
    arrays = dict(np.load(path)) if path.exists() else {}
    arrays[f"{name}.mu"] = stats.mu
    arrays[f"{name}.cov"] = stats.cov
    arrays[f"{name}.count"] = np.asarray(stats.count)
    arrays[f"{name}.identity"] = np.asarray(json.dumps(stats.identity, sort_keys=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:  # a file handle keeps numpy from appending ".npz"
        np.savez(handle, **arrays)
    return path


def load_statistics(path: str | Path, names: str | list[str]) -> Statistics:
    """Read ``<name>.mu`` / ``<name>.cov`` for the first of ``names`` present in the ``.npz``."""
    import json

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"reference statistics file {path} does not exist")
    names = [names] if isinstance(names, str) else list(names)
    with np.load(path, allow_pickle=False) as data:
        for name in names:
            if f"{name}.mu" in data and f"{name}.cov" in data:
                mu = data[f"{name}.mu"].astype(np.float64)
                cov = data[f"{name}.cov"].astype(np.float64)
                count = int(data[f"{name}.count"]) if f"{name}.count" in data else 0
                identity = (
                    json.loads(str(data[f"{name}.identity"])) if f"{name}.identity" in data else {}
                )
                return Statistics(mu=mu, cov=np.atleast_2d(cov), count=count, identity=identity)
        found = sorted({key.rsplit(".", 1)[0] for key in data.files})
    raise KeyError(f"{path} has no statistics for {' / '.join(names)}: it holds {found}")


# --- FAD variants -------------------------------------------------------------------------------


def per_song_fad(songs: list[np.ndarray], reference: Statistics) -> list[float | None]:
    """FAD of each song's own frames against the reference (fadtk's per-song score).

    A song with fewer than 2 frames has no covariance: its entry is None, never a made-up number.
    """
    scores: list[float | None] = []
    for frames in songs:
        if len(frames) < 2:
            scores.append(None)
            continue
        scores.append(fad(statistics_from_embeddings(frames), reference))
    return scores


SAMPLINGS = ("without_replacement", "fadtk")
RELIABLE_FRAMES = 1000  # below this many frames the 1/n fit is noise (r^2 ~ 0 measured at 500)


@dataclass
class FadInf:
    value: float  # intercept of FAD against 1/n: the FAD of an infinitely large set
    slope: float
    r2: float
    points: list[tuple[int, float]]
    sampling: str = "without_replacement"
    warning: str | None = None  # set when the set is too small for the fit to mean anything


def fad_inf(
    frames: np.ndarray,
    reference: Statistics,
    *,
    min_n: int = 500,
    steps: int = 25,
    seed: int = 0,
    sampling: str = "without_replacement",
    reliable_frames: int = RELIABLE_FRAMES,
) -> FadInf:
    """FAD of random subsets of n frames, n from ``min_n`` up to all (``steps`` points, fadtk's
    ``np.linspace``), fitted linearly against 1/n; the intercept extrapolates to n = infinity.

    ``sampling="fadtk"`` draws each subset WITH replacement, as fadtk 1.1.0 does: with the same
    draws it gives fadtk's number (duplicated frames inflate FAD at small n, so its intercept sits
    above the true distance). ``"without_replacement"`` draws distinct frames: a less biased
    extrapolation, but not fadtk's number. Below ``reliable_frames`` frames the result carries
    a warning.
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"FAD-inf sampling {sampling!r} is not one of {list(SAMPLINGS)}")
    frames = np.asarray(frames, dtype=np.float64)
    if len(frames) <= min_n:  # n = min_n only: one point repeated, no line to fit
        raise ValueError(f"FAD-inf needs more than {min_n} embedding frames, got {len(frames)}")
    rng = np.random.default_rng(seed)
    ns = [int(n) for n in np.linspace(min_n, len(frames), steps)]
    values = []
    for n in ns:
        picked = rng.choice(len(frames), size=n, replace=sampling == "fadtk")
        values.append(fad(statistics_from_embeddings(frames[picked]), reference))
    xs, ys = 1.0 / np.asarray(ns, dtype=np.float64), np.asarray(values)
    slope, intercept = np.polyfit(xs, ys, 1)
    residual = np.sum((ys - (slope * xs + intercept)) ** 2)
    spread = np.sum((ys - ys.mean()) ** 2)
    r2 = 1.0 - residual / spread if spread > 0 else 1.0
    warning = None
    if len(frames) < reliable_frames:
        warning = (
            f"only {len(frames)} generated frames (< {reliable_frames}): the 1/n fit over "
            f"{min_n}..{len(frames)} is dominated by noise (r^2 {r2:.3f}); do not read FAD-inf"
        )
    return FadInf(
        float(intercept),
        float(slope),
        float(r2),
        list(zip(ns, values, strict=True)),
        sampling,
        warning,
    )


def bootstrap_fad(
    songs: list[np.ndarray],
    reference: Statistics,
    *,
    samples: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, tuple[float, float]]:
    """The FAD of all ``songs`` together and the seeded bootstrap spread around it.

    Songs, not frames, are the independent unit (frames of one song are correlated). The
    interval is the SAMPLING SPREAD of FAD at this number of songs, not a confidence interval
    for the true distance: FAD is biased upwards at finite n, and the interval does not contain
    that bias (measured coverage in docs/evaluation.md). FAD is never negative, and neither is
    the interval's lower end (a spread wider than the point is cut at 0).
    """
    point = fad(statistics_from_embeddings(np.concatenate(songs)), reference)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(samples):
        picked = rng.integers(0, len(songs), size=len(songs))
        frames = np.concatenate([songs[i] for i in picked])
        if len(frames) >= 2:
            draws.append(fad(statistics_from_embeddings(frames), reference))
    low, high = centered_interval(point, np.asarray(draws), confidence)
    return point, (max(low, 0.0), high)


def fad_inf_entry(frames: np.ndarray, reference: Statistics, settings, seed: int) -> dict:
    """The report's ``fad_inf`` entry under ``eval.fad_inf`` settings, or why it is skipped."""
    if not settings.enabled:
        return {"skipped": "eval.fad_inf.enabled is false"}
    if len(frames) <= int(settings.min_frames):  # at min_frames: all subsets the same n
        return {
            "skipped": f"needs more than {settings.min_frames} generated frames, got {len(frames)}"
        }
    result = fad_inf(
        frames,
        reference,
        min_n=int(settings.min_frames),
        steps=int(settings.steps),
        seed=seed,
        sampling=str(settings.get("sampling", "without_replacement")),
        reliable_frames=int(settings.get("reliable_frames", RELIABLE_FRAMES)),
    )
    return {
        "value": result.value,
        "slope": result.slope,
        "r2": result.r2,
        "points": len(result.points),
        "sampling": result.sampling,
        "warning": result.warning,
    }
