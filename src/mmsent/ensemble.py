"""Ensembles of finished runs: average the class probabilities of runs cross-validated on the same folds.

Runs with different encoders make different mistakes, so their average beats each of them (benchmarks/README.md
measures it). Because every member predicted each training post out of fold, with the same folds, the averaged out-of-fold probabilities
are an honest cross-validation estimate of the ensemble too.

ENS/
  ensemble.json          {"members": [paths relative to ENS], "folds", "seed", "data"}
  metrics.json           the ensemble's cross-validation metrics (same layout as a run's) + each member's
  oof_predictions.csv    the averaged out-of-fold probabilities

``mmsent predict --run ENS`` and ``mmsent serve --run ENS`` average the members' fold ensembles (their uncalibrated
probabilities, which the ensemble was fitted on), then apply the ensemble's own temperature (ENS/calibration.json,
fitted on its out-of-fold probabilities like a run's). With ``--stack``
(:mod:`.stacking`), a logistic regression over the members' probabilities and VADER's lexicon scores combines them
instead; ensemble.json then also holds the fitted stacker.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from .calibration import CALIBRATION_FILE, fit_calibration
from .config import LABELS
from .cv import OOF_FILE, OOF_HEADER, RunError, cv_summary, describe_protocol, write_oof
from .data.folds import stratified_folds
from .io import atomic_write_json
from .metrics import classification_metrics, format_mean_std

ENSEMBLE_FILE = "ensemble.json"


def is_ensemble(folder: Path) -> bool:
    return (Path(folder) / ENSEMBLE_FILE).is_file()


def read_oof(run_dir: Path) -> tuple[list[str], list[str], np.ndarray]:
    """(guids, label names, probabilities (N, C)) from a run's oof_predictions.csv."""
    path = Path(run_dir) / OOF_FILE
    if not path.is_file():
        raise RunError(f"{run_dir} is not a finished run (no {OOF_FILE}); finish it with 'mmsent train'")
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0] != OOF_HEADER:
        raise RunError(f"{path} does not start with the header {OOF_HEADER!r}")
    rows = [line.split(",") for line in lines[1:] if line]
    try:
        probs = np.array([[float(v) for v in row[2:]] for row in rows], dtype=np.float64)
    except ValueError:
        raise RunError(f"{path} holds a row that is not 'guid,label,p,p,p'") from None
    if probs.shape != (len(rows), len(LABELS)):
        raise RunError(f"{path} holds a row that is not 'guid,label,p,p,p'")
    return [row[0] for row in rows], [row[1] for row in rows], probs


def _run_identity(run_dir: Path) -> dict:
    """What must agree between members: the data they were trained on and their folds."""
    from .predict import read_run_config

    if is_ensemble(run_dir):
        raise RunError(f"{run_dir} is an ensemble; give its member runs instead")
    config = read_run_config(run_dir)
    try:
        protocol = json.loads((Path(run_dir) / "metrics.json").read_text(encoding="utf-8")).get("protocol") or {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        protocol = {}
    if protocol.get("name") == "fixed_split":
        raise RunError(f"{run_dir} was trained on a fixed split (--val-file), not cross-validated: an ensemble "
                       "combines runs' out-of-fold predictions of every training post")
    result = Path(run_dir) / "folds" / "fold_0" / "result.json"
    try:
        data = json.loads(result.read_text(encoding="utf-8"))["data"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        raise RunError(f"{run_dir} is not a finished run ({result} missing or unreadable)") from None
    return {"folds": config.train.folds, "seed": config.train.seed, "data": data}


def _stack(member_probs: list[np.ndarray], guids: list[str], labels: np.ndarray, folds, data_dir: Path,
           fingerprint: str, c: float, log) -> tuple[np.ndarray, dict]:
    """Cross-fitted stacked probabilities (N, C) of the training posts, and the stacker fitted on all of them."""
    from .data.dataset import open_split
    from .stacking import LEXICON_TEXT_PREP, cross_fitted_probabilities, fit_stacker, lexicon_scores, stack_inputs

    split = open_split(Path(data_dir), Path(data_dir) / "train.txt", labelled=True)
    if split.fingerprint() != fingerprint:
        raise RunError(f"{data_dir} is not the data the members were trained on (its train.txt, texts or images "
                       "differ): give --data the folder they were trained on")
    texts = dict(zip(split.guids, split.texts(LEXICON_TEXT_PREP)))
    log(f"stacking: VADER lexicon scores of {len(guids)} training texts, a logistic regression per fold")
    inputs = stack_inputs(member_probs, lexicon_scores([texts[guid] for guid in guids]))
    return cross_fitted_probabilities(inputs, labels, folds, c), fit_stacker(inputs, labels, c).to_dict()


def build_ensemble(run_dirs: list[Path], out_dir: Path, log=print, stack_data: Path | None = None,
                   stack_c: float = 1.0) -> dict:
    """Combine the out-of-fold probabilities of ``run_dirs`` into the ensemble folder ``out_dir``; its metrics.

    The members' probabilities are averaged, or with ``stack_data`` (the data folder they were trained on) stacked
    (:mod:`.stacking`, inverse L2 strength ``stack_c``)."""
    start = time.perf_counter()
    run_dirs = [Path(r) for r in run_dirs]
    if len(run_dirs) < 2:
        raise RunError("an ensemble needs at least two runs")
    if len({r.resolve() for r in run_dirs}) != len(run_dirs):
        raise RunError("a run is given twice; give each member once")
    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file():
        raise RunError(f"{out_dir} holds a run (config.json); write the ensemble to another folder")
    identities = [_run_identity(r) for r in run_dirs]
    for run_dir, identity in zip(run_dirs[1:], identities[1:]):
        if identity != identities[0]:
            what = [k for k in identity if identity[k] != identities[0][k]]
            raise RunError(f"{run_dir} differs from {run_dirs[0]} in {', '.join(what)} (data fingerprint, number "
                           "of folds or seed): members must be cross-validated on the same data and folds")
    guids, names, _ = read_oof(run_dirs[0])
    member_probs = []
    for run_dir in run_dirs:
        member_guids, member_names, probs = read_oof(run_dir)
        if member_guids != guids or member_names != names:
            raise RunError(f"{run_dir}: its out-of-fold rows differ from those of {run_dirs[0]}")
        member_probs.append(probs)
    averaged = np.mean(member_probs, axis=0)  # (N, C)
    labels = np.array([LABELS.index(name) for name in names])
    folds = stratified_folds(labels.tolist(), identities[0]["folds"], identities[0]["seed"])
    probs, stacker = averaged, None
    if stack_data is not None:
        probs, stacker = _stack(member_probs, guids, labels, folds, stack_data, identities[0]["data"], stack_c, log)

    def cv_of(p: np.ndarray) -> tuple[dict, list[dict]]:
        rows = []
        for fold, (_, val_idx) in enumerate(folds):
            scores = classification_metrics(labels[val_idx], p[val_idx].argmax(1))
            rows.append({"fold": fold, **{k: scores[k] for k in ("accuracy", "weighted_f1", "macro_f1")},
                         "val_size": int(len(val_idx))})
        return cv_summary(rows), rows

    cv, rows = cv_of(probs)
    fold_of = np.zeros(len(labels), dtype=np.int64)
    for fold, (_, val_idx) in enumerate(folds):
        fold_of[val_idx] = fold
    calibration = fit_calibration(probs, labels, fold_of)  # of the combined probabilities, cross-fitted
    if is_ensemble(out_dir):
        log(f"replacing the ensemble in {out_dir} (an ensemble is recomputed from its members in seconds)")
    out_dir.mkdir(parents=True, exist_ok=True)
    members = [os.path.relpath(r.resolve(), out_dir.resolve()) for r in run_dirs]
    protocols = [_protocol_of(r) for r in run_dirs]
    metrics = {
        "protocol": protocols[0] if all(p == protocols[0] for p in protocols) else
        {"name": "mixed", "description": "members were trained under different protocols: "
                                         + "; ".join(describe_protocol({"protocol": p}) for p in protocols)},
        "combine": "stack" if stacker else "mean",
        "cv": cv, "folds": rows, "out_of_fold": classification_metrics(labels, probs.argmax(1)),
        "members": [{"run": member, "cv": cv_of(p)[0]} for member, p in zip(members, member_probs)],
        "calibration": calibration.summary(),
        "wall_seconds": time.perf_counter() - start,
    }
    if stacker:
        metrics["averaged_cv"] = cv_of(averaged)[0]  # what the plain mean of the same members gives
    extra = {"stacker": stacker} if stacker else {}
    atomic_write_json(out_dir / ENSEMBLE_FILE, {"members": members, **identities[0], **extra})
    atomic_write_json(out_dir / CALIBRATION_FILE, calibration.to_dict())
    atomic_write_json(out_dir / "metrics.json", metrics)
    write_oof(out_dir / OOF_FILE, guids, names, probs)
    return metrics


def _protocol_of(run_dir: Path) -> dict | None:
    return json.loads((Path(run_dir) / "metrics.json").read_text(encoding="utf-8")).get("protocol")


def read_stacker(ensemble_dir: Path):
    """The ensemble's fitted :class:`~.stacking.Stacker`, or None where its members are averaged."""
    from .stacking import Stacker

    data = json.loads((Path(ensemble_dir) / ENSEMBLE_FILE).read_text(encoding="utf-8"))
    return Stacker.from_dict(data["stacker"]) if isinstance(data, dict) and "stacker" in data else None


def member_dirs(ensemble_dir: Path) -> list[Path]:
    """The member run folders of an ensemble folder (paths in ensemble.json are relative to it)."""
    path = Path(ensemble_dir) / ENSEMBLE_FILE
    try:
        members = json.loads(path.read_text(encoding="utf-8"))["members"]
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members) or not members:
            raise TypeError
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        raise RunError(f"{path} does not list its member runs ('members': [paths])") from None
    dirs = [Path(ensemble_dir) / member for member in members]
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing:
        raise RunError(f"{ensemble_dir}: member runs not found: {', '.join(missing)} (ensemble.json names them "
                       "relative to the ensemble folder: move them together)")
    return dirs


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
