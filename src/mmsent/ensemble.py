"""Ensembles of finished runs: average the class probabilities of runs cross-validated on the same data.

Runs with different encoders make different mistakes, so their average can beat each of them; so do runs of one
configuration at different seeds (``mmsent train --seeds 1,2,3``, then ``mmsent ensemble`` of its seed runs).
Because every member predicted each training post out of fold (by a model that never saw it), the averaged
out-of-fold probabilities are an honest cross-validation estimate of the ensemble too, whether or not the members
drew the same folds; they are scored on the first member's folds. Stacking fits across the members' folds, so it
needs members of one seed (the same folds). The ensemble folder's layout: :mod:`mmsent.runfolder`.

``mmsent predict --run ENS`` and ``mmsent serve --run ENS`` average the members' fold ensembles (their uncalibrated
probabilities, which the ensemble was fitted on), then apply the ensemble's own temperature (fitted on its
out-of-fold probabilities like a run's). With ``--stack`` (:mod:`.stacking`), a logistic regression over the
members' probabilities and VADER's lexicon scores combines them instead; ensemble.json then also holds the fitted
stacker.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from .calibration import fit_calibration
from .data.folds import fold_assignment, stratified_folds
from .errors import InputError
from .metrics import classification_metrics, format_mean_std
from .runfolder import (OutOfFold, RunError, data_fingerprint, is_ensemble, is_run, read_oof, read_protocol,
                        read_run_config, require_current_folds, trained_config, write_calibration_dict,
                        write_ensemble_manifest, write_metrics, write_oof)
from .summaries import cv_summary, describe_protocol


def _run_identity(run_dir: Path) -> dict:
    """What must agree between members: the data they were trained on and their folds."""
    if is_ensemble(run_dir):
        raise RunError(f"{run_dir} is an ensemble; give its member runs instead")
    config = trained_config(run_dir)
    require_current_folds(config, run_dir, "be combined with other runs")
    if (read_protocol(run_dir) or {}).get("name") == "fixed_split":
        raise RunError(f"{run_dir} was trained on a fixed split (--val-file), not cross-validated: an ensemble "
                       "combines runs' out-of-fold predictions of every training post")
    data = data_fingerprint(run_dir)
    return {"folds": config.train.folds, "seed": config.train.seed, "data": data}


def _stack(member_probs: list[np.ndarray], guids: list[str], labels: np.ndarray, folds, data_dir: Path,
           member: Path, fingerprint: str, c: float | None, log) -> tuple[np.ndarray, dict]:
    """Cross-fitted stacked probabilities (N, C) of the training posts, and the stacker fitted on all of them.
    ``c`` None: the strength is chosen by nested cross-fitting (each fold's from the other folds only)."""
    from .data.dataset import open_data
    from .stacking import (LEXICON_TEXT_PREP, choose_c, cross_fitted_probabilities, fit_stacker, lexicon_scores,
                           nested_cross_fitted_probabilities, stack_inputs)

    split = open_data(Path(data_dir), "train", read_run_config(member).data)  # read as the members read it
    if split.fingerprint() != fingerprint:
        raise RunError(f"{data_dir} is not the data the members were trained on (its labelled posts, texts or "
                       "images differ): give --data the data set they were trained on")
    texts = dict(zip(split.guids, split.texts(LEXICON_TEXT_PREP)))
    log(f"stacking: VADER lexicon scores of {len(guids)} training texts, a logistic regression per fold")
    inputs = stack_inputs(member_probs, lexicon_scores([texts[guid] for guid in guids]))
    classes = member_probs[0].shape[1]
    try:
        if c is not None:
            return (cross_fitted_probabilities(inputs, labels, folds, c, classes=classes),
                    fit_stacker(inputs, labels, c, classes=classes).to_dict())
        probs, chosen = nested_cross_fitted_probabilities(inputs, labels, folds, classes=classes)
        final = choose_c(inputs, labels, folds, classes=classes)
        log(f"stacking: strength chosen per fold on the other folds {chosen}; for prediction {final}")
        return probs, {**fit_stacker(inputs, labels, final, classes=classes).to_dict(), "fold_c": chosen}
    except InputError as error:  # e.g. a fold whose other folds hold posts of one class only
        raise RunError(f"--stack: {error}; the members' out-of-fold posts cannot be stacked") from None


def _check_members(run_dirs: list[Path], out_dir: Path, same_folds: bool) -> dict:
    """Refuse members that cannot be combined; their shared identity (folds, seed, data fingerprint: the first
    member's seed, and every member's under "seeds" where they differ). ``same_folds``: members must share
    their seed too (stacking)."""
    if len(run_dirs) < 2:
        raise RunError("an ensemble needs at least two runs")
    if len({r.resolve() for r in run_dirs}) != len(run_dirs):
        raise RunError("a run is given twice; give each member once")
    if is_run(out_dir):
        raise RunError(f"{out_dir} holds a run (config.json); write the ensemble to another folder")
    identities = [_run_identity(r) for r in run_dirs]
    for run_dir, identity in zip(run_dirs[1:], identities[1:]):
        what = [k for k in identity if identity[k] != identities[0][k] and (same_folds or k != "seed")]
        if what:
            raise RunError(f"{run_dir} differs from {run_dirs[0]} in {', '.join(what)} (data fingerprint, number "
                           "of folds" + (" or seed): stacked members must be cross-validated on the same data "
                                         "and folds" if same_folds else "): members must be cross-validated on "
                                         "the same data with as many folds"))
    seeds = [identity["seed"] for identity in identities]
    return {**identities[0], **({"seeds": seeds} if len(set(seeds)) > 1 else {})}


def _members_oof(run_dirs: list[Path]) -> tuple[OutOfFold, list[np.ndarray]]:
    """The first member's out-of-fold rows, and every member's probabilities (N, C) of the same rows."""
    first = read_oof(run_dirs[0])
    member_probs = []
    for run_dir in run_dirs:
        oof = read_oof(run_dir)
        if oof.guids != first.guids or oof.labels != first.labels or oof.classes != first.classes:
            raise RunError(f"{run_dir}: its out-of-fold rows differ from those of {run_dirs[0]}")
        member_probs.append(oof.probs)
    return first, member_probs


def _cv_of(probs: np.ndarray, labels: np.ndarray, folds) -> tuple[dict, list[dict]]:
    """CV summary and fold rows of out-of-fold probabilities (N, C) scored on ``folds``."""
    classes = probs.shape[1]
    rows = []
    for fold, (_, val_idx) in enumerate(folds):
        scores = classification_metrics(labels[val_idx], probs[val_idx].argmax(1), classes)
        rows.append({"fold": fold, **{k: scores[k] for k in ("accuracy", "weighted_f1", "macro_f1")},
                     "val_size": int(len(val_idx))})
    return cv_summary(rows), rows


def _combined_protocol(run_dirs: list[Path]) -> dict | None:
    protocols = [read_protocol(r) for r in run_dirs]
    if all(p == protocols[0] for p in protocols):
        return protocols[0]
    return {"name": "mixed", "description": "members were trained under different protocols: "
                                            + "; ".join(describe_protocol({"protocol": p}) for p in protocols)}


def build_ensemble(run_dirs: list[Path], out_dir: Path, log=print, stack_data: Path | None = None,
                   stack_c: float | None = None) -> dict:
    """Combine the out-of-fold probabilities of ``run_dirs`` into the ensemble folder ``out_dir``; its metrics.

    The members' probabilities are averaged, or with ``stack_data`` (the data folder they were trained on) stacked
    (:mod:`.stacking`, inverse L2 strength ``stack_c``; None: chosen by nested cross-fitting)."""
    start = time.perf_counter()
    run_dirs, out_dir = [Path(r) for r in run_dirs], Path(out_dir)
    identity = _check_members(run_dirs, out_dir, same_folds=stack_data is not None)
    oof, member_probs = _members_oof(run_dirs)
    averaged = np.mean(member_probs, axis=0)  # (N, C)
    labels = oof.label_indices()
    folds = stratified_folds(labels.tolist(), identity["folds"], identity["seed"])  # the first member's folds
    probs, stacker = averaged, None
    if stack_data is not None:
        probs, stacker = _stack(member_probs, oof.guids, labels, folds, stack_data, run_dirs[0], identity["data"],
                                stack_c, log)
    calibration = fit_calibration(probs, labels, fold_assignment(folds, len(labels)))  # of the combined probabilities, cross-fitted
    if is_ensemble(out_dir):
        log(f"replacing the ensemble in {out_dir} (an ensemble is recomputed from its members in seconds)")
    out_dir.mkdir(parents=True, exist_ok=True)
    members = [os.path.relpath(r.resolve(), out_dir.resolve()) for r in run_dirs]
    cv, rows = _cv_of(probs, labels, folds)
    metrics = {
        "protocol": _combined_protocol(run_dirs),
        "combine": "stack" if stacker else "mean",
        "cv": cv, "folds": rows,
        "out_of_fold": classification_metrics(labels, probs.argmax(1), oof.classes),
        "members": [{"run": member, "cv": _cv_of(p, labels, folds)[0]} for member, p in zip(members, member_probs)],
        "calibration": calibration.summary(),
        "wall_seconds": time.perf_counter() - start,
        **({"averaged_cv": _cv_of(averaged, labels, folds)[0]} if stacker else {}),  # the plain mean, to compare
    }
    write_ensemble_manifest(out_dir, members, identity, stacker)
    write_calibration_dict(out_dir, calibration.to_dict())
    write_metrics(out_dir, metrics)
    write_oof(out_dir, OutOfFold(oof.guids, oof.labels, probs, oof.classes))
    return metrics


def summary_rows(metrics: dict) -> list[tuple[str, dict]]:
    """(name, CV summary) of each member, then of the ensemble: with ``--stack``, the plain mean of the same
    members first, for comparison, then the stack."""
    rows = [(member["run"], member["cv"]) for member in metrics["members"]]
    n = len(metrics["members"])
    if metrics.get("combine") == "stack":
        return rows + [(f"ensemble of {n} (mean probabilities)", metrics["averaged_cv"]),
                       (f"ensemble of {n} (stacked, cross-fitted)", metrics["cv"])]
    return rows + [(f"ensemble of {n} (mean probabilities)", metrics["cv"])]


def format_ensemble(metrics: dict) -> str:
    """A table of each member's and the ensemble's CV metrics."""
    return "\n".join(f"{name:40s} accuracy {format_mean_std(cv['accuracy_mean'], cv['accuracy_std'])}  weighted F1 "
                     f"{cv['weighted_f1_mean']:.4f}  macro F1 {cv['macro_f1_mean']:.4f}"
                     for name, cv in summary_rows(metrics))
