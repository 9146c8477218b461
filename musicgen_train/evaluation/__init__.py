"""Evaluation: Fréchet and kernel audio distances (several embedders), CLAP score, reports.

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
from musicgen_train.evaluation.kad import bootstrap_kad, kernel_audio_distance
from musicgen_train.evaluation.stats import statistics_from_files

__all__ = [
    "Statistics",
    "bootstrap_fad",
    "bootstrap_kad",
    "fad",
    "fad_inf",
    "frechet_distance",
    "kernel_audio_distance",
    "load_statistics",
    "per_song_fad",
    "save_statistics",
    "statistics_from_embeddings",
    "statistics_from_files",
]
