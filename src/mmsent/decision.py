"""The decision rule: how a label is chosen from a post's class probabilities.

``accuracy`` (the default) takes the most probable class, which maximises the expected accuracy. ``macro_f1``
adds one offset per class to the log-probabilities before taking the largest, with the offsets fitted on a run's
out-of-fold probabilities to maximise macro F1: a rare class (the neutral posts of MVSA) is then chosen more often,
at some cost in accuracy. The probabilities themselves never change, only the label.

The figures a rule reports are cross-fitted like the calibration's: each fold's posts are labelled with offsets
fitted on the other folds' rows. The offsets saved for prediction (``RUN/decision.json``) are fitted on all rows.
This module is numerics only; :mod:`mmsent.runfolder` owns the file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

RULES = ("accuracy", "macro_f1")
GRID = np.round(np.arange(-3.0, 3.0001, 0.05), 4)  # the offsets tried for each class
ROUNDS = 4  # coordinate-ascent passes over the classes
EPS = 1e-12


@dataclass
class DecisionRule:
    """Per-class offsets added to the log-probabilities; all zero = the most probable class."""

    rule: str = "accuracy"
    offsets: list[float] = field(default_factory=list)  # (C,), empty = zeros
    cross_fitted: dict = field(default_factory=dict)  # accuracy, weighted_f1, macro_f1 of the cross-fitted labels
    argmax: dict = field(default_factory=dict)  # the same figures with the most probable class
    fold_offsets: list[list[float]] = field(default_factory=list)

    def labels(self, probs: np.ndarray) -> np.ndarray:
        """Label indices (N,) of probabilities (N, C)."""
        return decide(probs, self.offsets)

    def to_dict(self) -> dict:
        return {**asdict(self), "method": "label = argmax(log p + offsets), offsets fitted on the out-of-fold "
                                          "probabilities by coordinate ascent to maximise the rule's figure"}

    @classmethod
    def from_dict(cls, data: dict) -> "DecisionRule":
        rule = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        if rule.rule not in RULES:
            raise ValueError(f"unknown decision rule {rule.rule!r}")
        if not all(isinstance(v, (int, float)) and np.isfinite(v) for v in rule.offsets):
            raise ValueError("offsets must be finite numbers")
        rule.offsets = [float(v) for v in rule.offsets]
        return rule


def decide(probs: np.ndarray, offsets=None) -> np.ndarray:
    """argmax over classes of log p + offsets -> (N,) label indices (offsets None or empty: plain argmax)."""
    probs = np.asarray(probs, dtype=np.float64)
    if offsets is None or len(offsets) == 0 or not np.any(offsets):
        return probs.argmax(axis=-1)
    return (np.log(np.clip(probs, EPS, 1.0)) + np.asarray(offsets, dtype=np.float64)).argmax(axis=-1)


def _macro_f1(labels: np.ndarray, predicted: np.ndarray, classes: int) -> float:
    f1 = []
    for c in range(classes):
        tp = np.sum((predicted == c) & (labels == c))
        fp = np.sum((predicted == c) & (labels != c))
        fn = np.sum((predicted != c) & (labels == c))
        f1.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1))


def fit_offsets(probs: np.ndarray, labels: np.ndarray, rule: str) -> list[float]:
    """The offsets (C,) that maximise ``rule``'s figure of ``decide(probs, offsets)`` on these rows (the first class
    stays at 0: only differences matter); ties keep the offset closest to 0."""
    classes = probs.shape[1]
    offsets = np.zeros(classes)
    if rule == "accuracy" or len(labels) == 0:
        return offsets.tolist()
    log_probs = np.log(np.clip(np.asarray(probs, dtype=np.float64), EPS, 1.0))
    best = _macro_f1(labels, log_probs.argmax(1), classes)
    order = np.argsort(np.abs(GRID), kind="stable")  # ties: the smallest change wins
    for _ in range(ROUNDS):
        changed = False
        for c in range(1, classes):
            for value in GRID[order]:
                trial = offsets.copy()
                trial[c] = value
                score = _macro_f1(labels, (log_probs + trial).argmax(1), classes)
                if score > best + 1e-12:
                    best, offsets, changed = score, trial, True
        if not changed:
            break
    return offsets.tolist()


def fit_decision(probs: np.ndarray, labels: np.ndarray, fold_of: np.ndarray, rule: str, classes) -> DecisionRule:
    """Cross-fitted figures of ``rule`` on out-of-fold ``probs`` (N, C) and the offsets fitted on all rows."""
    from .metrics import classification_metrics  # scikit-learn: for fitting only (deciding needs NumPy alone)

    if rule not in RULES:
        raise ValueError(f"unknown decision rule {rule!r}; choose one of {', '.join(RULES)}")
    labels, fold_of = np.asarray(labels), np.asarray(fold_of)
    if len(np.unique(fold_of)) < 2:  # one fold (a fixed split's validation posts): parts of their own
        from .calibration import stratified_parts

        fold_of = stratified_parts(labels)
    predicted = np.zeros(len(labels), dtype=np.int64)
    fold_offsets = []
    for fold in np.unique(fold_of):
        held = fold_of == fold
        offsets = fit_offsets(probs[~held], labels[~held], rule)
        fold_offsets.append([round(v, 4) for v in offsets])
        predicted[held] = decide(probs[held], offsets)
    figures = ("accuracy", "weighted_f1", "macro_f1")
    crossed = classification_metrics(labels, predicted, classes)
    plain = classification_metrics(labels, probs.argmax(1), classes)
    return DecisionRule(rule, [round(v, 4) for v in fit_offsets(probs, labels, rule)],
                        {k: float(crossed[k]) for k in figures}, {k: float(plain[k]) for k in figures}, fold_offsets)


def format_decision(rule: DecisionRule) -> str:
    """One line: the rule, its offsets and its cross-fitted figures beside the most probable class's."""
    if rule.rule == "accuracy":
        return "decision: the most probable class (accuracy)"
    c, a = rule.cross_fitted, rule.argmax
    return (f"decision: {rule.rule}, offsets {', '.join(f'{v:+.2f}' for v in rule.offsets)}; cross-fitted accuracy "
            f"{a['accuracy']:.4f} -> {c['accuracy']:.4f}, weighted F1 {a['weighted_f1']:.4f} -> "
            f"{c['weighted_f1']:.4f}, macro F1 {a['macro_f1']:.4f} -> {c['macro_f1']:.4f}")
