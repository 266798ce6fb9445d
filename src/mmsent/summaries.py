"""A run's summary figures and how they are printed: the mean and spread over folds, the protocol that produced
them, the lines ``mmsent train`` prints. Works on metrics.json's contents only (no run folder, no PyTorch)."""

from __future__ import annotations

import numpy as np

from .config import TrainConfig
from .decision import DecisionRule, format_decision
from .metrics import format_mean_std


def protocol_of(config: TrainConfig, fixed_split: bool = False) -> dict:
    """What produced a run's figures: ``{"name", "selection", "description"}`` (saved in metrics.json)."""
    if fixed_split:
        return {"name": "fixed_split", "selection": "validation_file",
                "description": "one model trained on the training file; early stopping chose its epoch on the "
                               "validation file, whose figures these are (chosen on: score a test file with "
                               "'mmsent evaluate')"}
    if config.select_on == "scored_fold":
        return {"name": "cv_select_on_scored_fold", "selection": "scored_fold",
                "description": f"cross-validation over {config.folds} folds; early stopping chose each fold's "
                               "epoch on the fold it scores (optimistic)"}
    return {"name": "cv_inner_selection", "selection": "inner", "inner_val": config.inner_val,
            "description": f"cross-validation over {config.folds} folds; early stopping chose each fold's epoch on "
                           f"a stratified {config.inner_val:.0%} of its training part; the scored fold only scores"}


def describe_protocol(metrics: dict) -> str:
    """One line on how a run's figures were produced (runs written before it was recorded chose on the scored
    fold)."""
    protocol = metrics.get("protocol")
    if protocol is None:
        return ("protocol not recorded (a run from before the inner validation split: early stopping chose on the "
                "scored fold, optimistic)")
    return protocol["description"]


def cv_summary(fold_rows: list[dict]) -> dict:
    """Mean and standard deviation over folds of accuracy, weighted F1 and macro F1 (``accuracy_mean`` ...)."""
    summary = {}
    for key in ("accuracy", "weighted_f1", "macro_f1"):
        values = np.array([row[key] for row in fold_rows])
        summary[f"{key}_mean"], summary[f"{key}_std"] = float(values.mean()), float(values.std())
    return summary


def format_calibration(summary: dict) -> str:
    """One line: the temperature and the cross-fitted ECE / NLL before and after it."""
    if summary.get("ece_before") is None:
        return "calibration: no scored posts"
    return (f"calibration: temperature {summary['temperature']:.3f}; expected calibration error "
            f"{summary['ece_before']:.4f} -> {summary['ece_after']:.4f}, NLL {summary['nll_before']:.4f} -> "
            f"{summary['nll_after']:.4f} (cross-fitted, {summary['bins']} bins)")


def figures_name(metrics: dict) -> str:
    """What a run's headline figures are: "5-fold CV" or "validation (fixed split)"."""
    if metrics.get("protocol", {}).get("name") == "fixed_split":
        return "validation (fixed split)"
    return f"{len(metrics['folds'])}-fold CV"


def format_summary(metrics: dict) -> str:
    cv = metrics["cv"]
    data = metrics["data"]
    return "\n".join([
        f"{figures_name(metrics)}: accuracy {format_mean_std(cv['accuracy_mean'], cv['accuracy_std'])}  "
        f"weighted F1 {format_mean_std(cv['weighted_f1_mean'], cv['weighted_f1_std'])}  "
        f"macro F1 {format_mean_std(cv['macro_f1_mean'], cv['macro_f1_std'])}",
        f"protocol: {describe_protocol(metrics)}",
        *([format_calibration(metrics["calibration"])] if "calibration" in metrics else []),
        *([format_decision(DecisionRule.from_dict(metrics["decision"]))] if "decision" in metrics else []),
        f"data: {data['posts']} posts {data['label_counts']}; text encodings {data['text_encodings']}",
        f"data repaired or worked around: {data['images_unusable']} text only (image unusable), "
        f"{data.get('texts_unusable', 0)} image only (text missing or empty), "
        f"{data.get('texts_fallback_encoding', 0)} texts decoded with a fallback encoding (cp1252/latin-1), "
        f"{data.get('texts_truncated', 0)} texts truncated, {data.get('rows_dropped', 0)} label rows dropped, "
        f"{data.get('headers_missing', 0)} label file without header; {data['warnings']} warnings in all",
        f"wall time {metrics['wall_seconds']:.1f} s (features {metrics['feature_seconds']:.1f} s) on {metrics['device']}",
    ])
