"""Classification metrics from scikit-learn (accuracy, per-class precision / recall / F1, weighted and macro F1, the
confusion matrix), and how a mean ± standard deviation is written."""

from __future__ import annotations

import numpy as np

from .config import LABELS


def classification_metrics(y_true, y_pred, n_classes: int = len(LABELS)) -> dict:
    """Accuracy, weighted / macro F1, per-class precision / recall / F1 / support and the confusion matrix (rows:
    true, columns: predicted). Every one of the ``n_classes`` classes counts, present or not (its scores then 0);
    no posts score 0 throughout."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    classes = list(range(n_classes))
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    scores = {"accuracy": 0.0, "weighted_f1": 0.0, "macro_f1": 0.0}
    precision = recall = f1 = support = np.zeros(n_classes)
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    if len(y_true):  # scikit-learn refuses empty arrays
        scores = {"accuracy": accuracy_score(y_true, y_pred),
                  **{f"{average}_f1": f1_score(y_true, y_pred, labels=classes, average=average, zero_division=0)
                     for average in ("weighted", "macro")}}
        precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=classes,
                                                                         zero_division=0)
        confusion = confusion_matrix(y_true, y_pred, labels=classes)
    return {
        **{name: float(value) for name, value in scores.items()},
        "per_class": {
            LABELS[c]: {"precision": float(precision[c]), "recall": float(recall[c]), "f1": float(f1[c]),
                        "support": int(support[c])}
            for c in classes
        },
        "confusion": confusion.tolist(),
    }


def format_mean_std(mean: float, std: float) -> str:
    """``0.7305 ± 0.0074``: a mean and its standard deviation, four decimals each."""
    return f"{mean:.4f} ± {std:.4f}"
