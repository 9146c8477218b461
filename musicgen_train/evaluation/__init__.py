"""Evaluation: Fréchet audio distance (several embedders), CLAP score, reports.

The public API of the metrics; ``musicgen_train.evaluation.run.evaluate`` runs a whole evaluation.
"""

from musicgen_train.evaluation.frechet import (
    Statistics,
    bootstrap_fad,
    fad,
    fad_inf,
    frechet_distance,
    load_statistics,
    per_song_fad,
    save_statistics,
    statistics_from_embeddings,
)
from musicgen_train.evaluation.stats import statistics_from_files

__all__ = [
    "Statistics",
    "bootstrap_fad",
    "fad",
    "fad_inf",
    "frechet_distance",
    "load_statistics",
    "per_song_fad",
    "save_statistics",
    "statistics_from_embeddings",
    "statistics_from_files",
]
