"""Temperature scaling of a run's class probabilities, and how well calibrated they are.

One scalar ``T`` per run: calibrated probabilities are ``softmax(log(p) / T)`` (for a softmax model that is
``softmax(logits / T)``; the predicted label never changes). ``T`` is fitted by minimising the negative
log-likelihood of the out-of-fold probabilities over ``log T`` (a bounded scalar search).

The figures a run reports are cross-fitted: each fold's posts are calibrated by a temperature fitted on the other
folds' out-of-fold rows, so the calibration error "after" is measured on rows its temperature never saw. The
temperature saved for prediction (``RUN/calibration.json``) is then fitted on all the out-of-fold rows. A run
without that file predicts uncalibrated (``T = 1``).

The expected calibration error (ECE) is the top-label one: the predictions are put in ``bins`` equal-width bins of
confidence (their highest probability) and ``ECE = sum_b n_b / N * |accuracy_b - confidence_b|``.

The maths only: a run's calibration file is read by :mod:`mmsent.runfolder` and fitted again by
:mod:`mmsent.refit`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

BINS = 15
LOG_T_BOUNDS = (-3.0, 3.0)  # T between 0.05 and 20 (separable rows would otherwise drive T towards 0)
EPS = 1e-7


def _log_probs(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), EPS, 1.0))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(probs) / T)`` row by row, (N, C) -> (N, C); ``T = 1`` returns ``probs`` unchanged."""
    probs = np.asarray(probs)
    if temperature == 1.0:
        return probs
    scaled = _log_probs(probs) / temperature
    scaled -= scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    return (exp / exp.sum(axis=-1, keepdims=True)).astype(probs.dtype if probs.dtype.kind == "f" else np.float64)


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray) -> float:
    labels = np.asarray(labels, dtype=np.int64)
    return float(-_log_probs(probs)[np.arange(len(labels)), labels].mean())


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The ``T`` minimising the mean NLL of ``softmax(log(probs) / T)`` (bounded search over ``log T``)."""
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    logits = _log_probs(probs)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return 1.0
    rows = np.arange(len(labels))

    def nll(log_t: float) -> float:
        return float(-log_softmax(logits / np.exp(log_t), axis=1)[rows, labels].mean())

    result = minimize_scalar(nll, bounds=LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-5})
    return float(np.exp(result.x))


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> list[dict]:
    """Per equal-width confidence bin: ``{"lower", "upper", "count", "confidence", "accuracy"}`` (empty bins too,
    with count 0)."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)  # (lower, upper]; 0 in bin 0
    rows = []
    for b in range(bins):
        member = which == b
        count = int(member.sum())
        rows.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": count,
                     "confidence": float(confidence[member].mean()) if count else None,
                     "accuracy": float(correct[member].mean()) if count else None})
    return rows


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    rows = reliability(probs, labels, bins)
    total = max(sum(r["count"] for r in rows), 1)
    return float(sum(r["count"] / total * abs(r["accuracy"] - r["confidence"]) for r in rows if r["count"]))


@dataclass
class Calibration:
    """A run's temperature and the calibration figures of its out-of-fold probabilities (cross-fitted)."""

    temperature: float = 1.0
    posts: int = 0
    bins: int = BINS
    ece_before: float | None = None
    ece_after: float | None = None
    nll_before: float | None = None
    nll_after: float | None = None
    fold_temperatures: list[float] = field(default_factory=list)  # the cross-fitted ones, one per fold
    reliability_before: list[dict] = field(default_factory=list)
    reliability_after: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        """What metrics.json keeps: the temperature and the figures, without the per-bin rows."""
        return {k: v for k, v in asdict(self).items() if not k.startswith("reliability")}

    def to_dict(self) -> dict:
        return {**asdict(self), "method": "temperature scaling: softmax(log(p) / T), T fitted by NLL on the "
                                          "out-of-fold probabilities; figures cross-fitted over folds"}

    @classmethod
    def from_dict(cls, data: dict) -> "Calibration":
        known = {f for f in cls.__dataclass_fields__}
        calibration = cls(**{k: v for k, v in data.items() if k in known})
        if not isinstance(calibration.temperature, (int, float)) or not calibration.temperature > 0:
            raise ValueError(f"temperature must be a positive number, got {calibration.temperature!r}")
        calibration.temperature = float(calibration.temperature)
        return calibration


def fit_calibration(probs: np.ndarray, labels: np.ndarray, fold_of: np.ndarray, bins: int = BINS) -> Calibration:
    """Cross-fitted calibration figures of out-of-fold ``probs`` (N, C) and the temperature fitted on all rows.

    ``fold_of[i]`` is the fold that scored row i. With one fold only (a fixed split's validation posts) the rows
    are cross-fitted over 5 stratified parts of their own instead.
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels, fold_of = np.asarray(labels, dtype=np.int64), np.asarray(fold_of)
    if len(labels) == 0:
        return Calibration(posts=0, bins=bins)
    if len(np.unique(fold_of)) < 2:
        fold_of = stratified_parts(labels)
    calibrated = np.empty_like(probs)
    fold_temperatures = []
    for fold in np.unique(fold_of):
        held = fold_of == fold
        temperature = fit_temperature(probs[~held], labels[~held]) if (~held).any() else 1.0
        fold_temperatures.append(temperature)
        calibrated[held] = apply_temperature(probs[held], temperature)
    return Calibration(
        temperature=fit_temperature(probs, labels), posts=int(len(labels)), bins=bins,
        ece_before=expected_calibration_error(probs, labels, bins),
        ece_after=expected_calibration_error(calibrated, labels, bins),
        nll_before=negative_log_likelihood(probs, labels), nll_after=negative_log_likelihood(calibrated, labels),
        fold_temperatures=fold_temperatures,
        reliability_before=reliability(probs, labels, bins), reliability_after=reliability(calibrated, labels, bins))


def stratified_parts(labels: np.ndarray, k: int = 5) -> np.ndarray:
    """Stratified parts (fold number per row) of rows that came from one fold; fewer parts for tiny sets."""
    from sklearn.model_selection import StratifiedKFold

    smallest = np.bincount(labels)[np.bincount(labels) > 0].min()
    k = int(min(k, smallest))
    if k < 2:
        return np.arange(len(labels)) % 2 if len(labels) > 1 else np.zeros(len(labels), dtype=np.int64)
    fold_of = np.zeros(len(labels), dtype=np.int64)
    for fold, (_, held) in enumerate(StratifiedKFold(k, shuffle=True, random_state=0).split(labels, labels)):
        fold_of[held] = fold
    return fold_of
