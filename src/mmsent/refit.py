"""Fitting again what a finished run's out-of-fold predictions give: its calibration (``mmsent calibrate``) and its
decision rule (``mmsent decide``). Both read the run's out-of-fold rows and rebuild the folds that scored them
(:func:`scored_rows`); the maths is :mod:`mmsent.calibration`'s and :mod:`mmsent.decision`'s."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .calibration import Calibration, fit_calibration
from .data.folds import fold_assignment, stratified_folds
from .decision import DecisionRule, fit_decision
from .runfolder import (DECISION_FILE, OutOfFold, RunError, is_ensemble, read_metrics, read_oof,
                        require_current_folds, trained_config, write_calibration_dict, write_decision_dict,
                        write_metrics)


def is_fixed_split(metrics: dict) -> bool:
    """Whether a run's figures are those of a validation file (the fixed-split protocol) rather than of folds."""
    return metrics.get("protocol", {}).get("name") == "fixed_split"


def scored_rows(run_dir: Path, metrics: dict, what: str) -> tuple[OutOfFold, np.ndarray, np.ndarray]:
    """A finished run's out-of-fold rows, their label indices (N,) and the fold that scored each (N,), rebuilt from
    its config's folds and seed. A fixed split's validation posts all come from one fold (0). ``what`` completes
    "cannot ..." in the error for a run whose folds this version cannot rebuild."""
    oof = read_oof(run_dir)
    labels = oof.label_indices()
    if is_fixed_split(metrics):
        return oof, labels, np.zeros(len(labels), dtype=np.int64)
    config = trained_config(run_dir)
    require_current_folds(config, run_dir, what)
    folds = stratified_folds(labels.tolist(), config.train.folds, config.train.seed)
    return oof, labels, fold_assignment(folds, len(labels))


def calibrate_run(run_dir: Path) -> Calibration:
    """Fit (again) the calibration of a finished k-fold run from its out-of-fold probabilities (5 decimals) and its
    folds; writes calibration.json and metrics.json's ``calibration``. For runs trained before calibration was saved
    with every run."""
    run_dir = Path(run_dir)
    if is_ensemble(run_dir):
        raise RunError(f"{run_dir} is an ensemble: it predicts with its members' uncalibrated probabilities")
    trained_config(run_dir)  # a folder that is not a finished run is refused before anything is read
    metrics = read_metrics(run_dir)
    if is_fixed_split(metrics):
        raise RunError(f"{run_dir} was trained on a fixed split; 'mmsent train' calibrated it already")
    oof, labels, fold_of = scored_rows(run_dir, metrics, "be calibrated again from its out-of-fold predictions")
    calibration = fit_calibration(oof.probs, labels, fold_of)
    write_calibration_dict(run_dir, calibration.to_dict())
    write_metrics(run_dir, {**metrics, "calibration": calibration.summary()})
    return calibration


def decide_run(run_dir: Path, rule: str) -> DecisionRule:
    """Fit the decision rule ``rule`` of a finished run from its out-of-fold probabilities and its folds; writes
    decision.json (removed for ``accuracy``: the most probable class) and metrics.json's ``decision``. Predict,
    evaluate and serve then label by it. A fixed split's validation posts are cross-fitted over parts of their own."""
    run_dir = Path(run_dir)
    if is_ensemble(run_dir):
        raise RunError(f"{run_dir} is an ensemble; fit the decision rule of a run ('mmsent decide --run RUN')")
    trained_config(run_dir)  # a folder that is not a finished run is refused before anything is read
    metrics = read_metrics(run_dir)
    oof, labels, fold_of = scored_rows(run_dir, metrics,
                                       "have its decision rule fitted from its out-of-fold predictions")
    decision = fit_decision(oof.probs, labels, fold_of, rule, oof.classes)
    metrics.pop("decision", None)
    if rule == "accuracy":
        (run_dir / DECISION_FILE).unlink(missing_ok=True)
    else:
        write_decision_dict(run_dir, decision.to_dict())
        metrics["decision"] = decision.to_dict()
    write_metrics(run_dir, metrics)
    return decision
