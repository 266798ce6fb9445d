"""Classification metrics: accuracy, per-class precision/recall/F1, weighted and macro F1, confusion matrix."""

from __future__ import annotations

import numpy as np

from .config import LABELS


def classification_metrics(y_true, y_pred, n_classes: int = len(LABELS)) -> dict:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)  # rows: true, columns: predicted
    np.add.at(confusion, (y_true, y_pred), 1)
    tp = np.diag(confusion).astype(float)
    support = confusion.sum(1).astype(float)
    predicted = confusion.sum(0).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    total = max(len(y_true), 1)
    return {
        "accuracy": float(tp.sum() / total),
        "weighted_f1": float((f1 * support).sum() / total),
        "macro_f1": float(f1.mean()),
        "per_class": {
            LABELS[c]: {"precision": float(precision[c]), "recall": float(recall[c]), "f1": float(f1[c]),
                        "support": int(support[c])}
            for c in range(n_classes)
        },
        "confusion": confusion.tolist(),
    }


def format_mean_std(mean: float, std: float) -> str:
    """"0.7190 ± 0.0122": how every figure with its spread is printed."""
    return f"{mean:.4f} ± {std:.4f}"
