"""Seeded stratified k-fold splits (scikit-learn's ``StratifiedKFold``, shuffled)."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .posts import DataError


def stratified_folds(labels: list[int], k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Return k (train_idx, val_idx) pairs; each class is spread evenly over the folds, reproducibly by ``seed``."""
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        raise DataError("no labelled posts to split into folds")
    if k < 2:
        raise ConfigError("folds must be at least 2")
    counts = np.bincount(labels)
    if len(labels) < k or counts[counts > 0].min() < k:
        raise DataError(f"every class needs at least {k} examples for {k}-fold cross-validation; "
                        f"counts: {counts.tolist()}")
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(np.asarray(train, dtype=np.int64), np.asarray(val, dtype=np.int64))
            for train, val in splitter.split(np.zeros(len(labels)), labels)]


def fold_assignment(folds: list[tuple[np.ndarray, np.ndarray]], n: int) -> np.ndarray:
    """(n,) the fold whose validation part holds each row (0 for a row no fold scores)."""
    fold_of = np.zeros(n, dtype=np.int64)
    for fold, (_, val_idx) in enumerate(folds):
        fold_of[val_idx] = fold
    return fold_of
