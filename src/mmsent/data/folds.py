"""Seeded stratified k-fold splits."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .records import DataError


def stratified_folds(labels: list[int], k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Return k (train_idx, val_idx) pairs; each class is spread evenly over the folds, reproducibly."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        raise DataError("no labelled posts to split into folds")
    if k < 2:
        raise ConfigError("folds must be at least 2")
    counts = np.bincount(labels)
    if len(labels) < k or counts[counts > 0].min() < k:
        raise DataError(f"every class needs at least {k} examples for {k}-fold cross-validation; counts: {counts.tolist()}")
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(labels), dtype=np.int64)
    offset = 0
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        # deal members round-robin, starting where the previous class stopped, so fold sizes stay balanced
        fold_of[members] = (np.arange(len(members)) + offset) % k
        offset = (offset + len(members)) % k
    return [(np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)) for f in range(k)]
