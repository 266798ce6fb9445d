"""Classification metrics (scikit-learn's): accuracy, per-class precision/recall/F1, weighted and macro F1,
confusion matrix; and how a figure with its spread is printed."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def classification_metrics(y_true, y_pred, classes: Sequence[str] | int) -> dict:
    """Figures of predicted class indices ``y_pred`` (N,) against ``y_true`` (N,).

    ``classes``: the class names in index order (or their number; the names are then "0", "1", ...). Every class
    gets a row and a column of the confusion matrix, even one absent from both arrays."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    names = [str(c) for c in range(classes)] if isinstance(classes, int) else list(classes)
    indices = list(range(len(names)))
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=indices,
                                                                     zero_division=0)
    empty = len(y_true) == 0
    return {
        "accuracy": 0.0 if empty else float(accuracy_score(y_true, y_pred)),
        "weighted_f1": 0.0 if empty else float(f1_score(y_true, y_pred, labels=indices, average="weighted",
                                                        zero_division=0)),
        "macro_f1": float(np.mean(f1)),  # over every class, present or not
        "per_class": {name: {"precision": float(precision[c]), "recall": float(recall[c]), "f1": float(f1[c]),
                             "support": int(support[c])} for c, name in enumerate(names)},
        "confusion": confusion_matrix(y_true, y_pred, labels=indices).tolist(),  # rows: true, columns: predicted
    }


def format_mean_std(mean: float, std: float) -> str:
    """How every figure with its spread is printed: the mean, "±", the standard deviation, four decimals each."""
    return f"{mean:.4f} ± {std:.4f}"
