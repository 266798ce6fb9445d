"""Stacking for ensembles: a multinomial logistic regression that combines the members' class probabilities with a
sentiment lexicon's scores of the post's text, instead of averaging the probabilities.

Its inputs per post: each member's log-probabilities (C each) and VADER's four scores (neg, neu, pos, compound) of
the cleaned text. ``mmsent ensemble --stack`` fits it on the members' out-of-fold probabilities; the figures it
reports are cross-fitted (fitted on the other folds' posts, scored on each fold's), and the stacker kept for
prediction is then fitted on all of them (what it gains over averaging: benchmarks/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .lexicon import VADER_SCORES, VADER_TEXT_PREP, vader_scores, vader_scores_of_raw

LEXICON_SCORES = VADER_SCORES  # the stacker reads VADER's four scores
LEXICON_TEXT_PREP = VADER_TEXT_PREP
lexicon_scores = vader_scores  # of cleaned texts
lexicon_scores_of_raw = vader_scores_of_raw  # of raw texts


def stack_inputs(member_probs: list[np.ndarray], lexicon: np.ndarray) -> np.ndarray:
    """Members' probabilities [(N, C), ...] and lexicon scores (N, 4) -> the stacker's inputs (N, M*C + 4)."""
    logs = [np.log(np.clip(probs, 1e-6, 1.0)) for probs in member_probs]
    return np.concatenate([*logs, lexicon], axis=1)


@dataclass
class Stacker:
    """A fitted multinomial logistic regression: probabilities = softmax(inputs @ weights.T + bias)."""

    weights: np.ndarray  # (C, F)
    bias: np.ndarray  # (C,)
    c: float  # inverse L2 strength it was fitted with

    def probabilities(self, inputs: np.ndarray) -> np.ndarray:
        """(N, F) -> (N, C)."""
        if inputs.shape[1] != self.weights.shape[1]:
            raise ValueError(f"the stacker takes {self.weights.shape[1]} inputs per post, got {inputs.shape[1]}")
        logits = inputs @ self.weights.T + self.bias  # (N, C)
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def to_dict(self) -> dict:
        return {"weights": self.weights.tolist(), "bias": self.bias.tolist(), "c": self.c,
                "inputs": "log-probabilities of each member, in member order, then VADER " + ", ".join(LEXICON_SCORES)}

    @classmethod
    def from_dict(cls, data: dict) -> Stacker:
        try:
            weights = np.array(data["weights"], dtype=np.float64)
            bias = np.array(data["bias"], dtype=np.float64)
            if weights.ndim != 2 or weights.shape[0] < 2 or bias.shape != (weights.shape[0],):
                raise ValueError
            return cls(weights, bias, float(data["c"]))
        except (KeyError, TypeError, ValueError):
            raise ValueError("malformed: expected weights (C, F) of at least two classes, bias (C,) and c") from None


ABSENT_CLASS_BIAS = -1e4  # the bias of a class without training posts: its probability is 0 (finite, for JSON)


def fit_stacker(inputs: np.ndarray, labels: np.ndarray, c: float = 1.0, *, classes: int) -> Stacker:
    """Fit scikit-learn's multinomial ``LogisticRegression(C=c)`` (L-BFGS): it minimises mean cross-entropy
    + |weights|^2 / (2 c N), the bias unpenalised, so ``c`` is scikit-learn's C. Only its coefficients and
    intercepts are kept, one row per class of ``range(classes)``; a class absent from ``labels`` gets zero weights
    and a bias that gives it probability 0."""
    from sklearn.linear_model import LogisticRegression

    if c <= 0:
        raise ValueError(f"the stacker's C must be positive, got {c}")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"labels must be class indices in 0..{classes - 1}")
    if len(np.unique(labels)) < 2:
        raise InputError("stacking needs posts of at least two classes")
    model = LogisticRegression(C=c, max_iter=1000, tol=1e-8).fit(np.asarray(inputs, dtype=np.float64), labels)
    coef, intercept = model.coef_, model.intercept_
    if len(model.classes_) == 2:  # one logit of classes_[1] against classes_[0]: the same softmax as [0, logit]
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.array([0.0, intercept[0]])
    weights = np.zeros((classes, inputs.shape[1]))
    bias = np.full(classes, ABSENT_CLASS_BIAS)
    weights[model.classes_], bias[model.classes_] = coef, intercept
    return Stacker(weights, bias, float(c))


def cross_fitted_probabilities(inputs: np.ndarray, labels: np.ndarray, folds, c: float, *,
                               classes: int) -> np.ndarray:
    """Probabilities (N, ``classes``) of each fold's posts from a stacker fitted on the other folds' posts."""
    probs = np.zeros((len(labels), classes))
    for train_idx, val_idx in folds:
        stacker = fit_stacker(inputs[train_idx], labels[train_idx], c, classes=classes)
        probs[val_idx] = stacker.probabilities(inputs[val_idx])
    return probs


STACK_C_GRID = (0.01, 0.1, 1.0, 10.0)  # the inverse L2 strengths ``--stack-c auto`` chooses from


def _nll(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0))))


def choose_c(inputs: np.ndarray, labels: np.ndarray, folds, *, classes: int, grid=STACK_C_GRID) -> float:
    """The strength of ``grid`` whose cross-fitted probabilities over ``folds`` have the lowest negative
    log-likelihood (ties: the stronger regularisation)."""
    scores = [(_nll(cross_fitted_probabilities(inputs, labels, folds, c, classes=classes), labels), c) for c in grid]
    return min(scores)[1]


def nested_cross_fitted_probabilities(inputs: np.ndarray, labels: np.ndarray, folds, *, classes: int,
                                      grid=STACK_C_GRID) -> tuple[np.ndarray, list[float]]:
    """Probabilities (N, ``classes``) of each fold's posts from a stacker whose strength was chosen, and which was
    fitted, on the other folds' posts only (the strength by cross-fitting among those folds): no figure comes from
    posts its strength was chosen on. Also returns the strength chosen for each fold."""
    from .calibration import stratified_parts

    probs, chosen = np.zeros((len(labels), classes)), []
    for train_idx, val_idx in folds:
        part = stratified_parts(labels[train_idx], k=4)  # inner folds of the other folds' posts
        inner = [(np.flatnonzero(part != p), np.flatnonzero(part == p)) for p in np.unique(part)]
        c = choose_c(inputs[train_idx], labels[train_idx], inner, classes=classes, grid=grid)
        chosen.append(c)
        probs[val_idx] = fit_stacker(inputs[train_idx], labels[train_idx], c, classes=classes).probabilities(
            inputs[val_idx])
    return probs, chosen
