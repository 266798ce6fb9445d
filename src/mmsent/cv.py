"""Stratified k-fold training of one configuration -> a run folder (its layout: :mod:`mmsent.runfolder`).

Each fold's epoch is chosen by early stopping on a stratified inner part of its training posts
(``train.select_on=inner``, ``train.inner_val``); the fold itself is predicted once by the chosen weights, only to be
scored. ``select_on=scored_fold`` chooses on the scored fold (the first protocol, optimistic). With a validation
file instead of folds (the fixed-split protocol), one model is trained and chosen on that file.

``train_cv(resume=True)`` continues an interrupted run: finished folds are kept, an unfinished one continues from
its checkpoint, and the run ends with the same metrics as an uninterrupted one.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ._version import __version__
from .atomic import atomic_write_json, save_tensors
from .calibration import fit_calibration
from .checkpoint import read_info
from .decision import DecisionRule, fit_decision
from .config import ConfigError, RunConfig, TrainConfig, normalised_labels, run_labels
from .data.dataset import Split
from .data.folds import fold_assignment, stratified_folds
from .data.posts import DataError
from .distributed import Shard, current_shard
from .features import compute_features
from .inference import FeatureBatches, predict_probs, resolve_device
from .metrics import classification_metrics
from .model import MultimodalClassifier, Towers, load_towers
from .runfolder import (CHECKPOINT_FILE, HISTORY_FILE, MODEL_FILE, OutOfFold, RunError, finished_fold, fold_dir,
                        prepare_run_dir, write_calibration_dict, write_decision_dict, write_fold_result, write_metrics,
                        write_oof)
from .summaries import cv_summary, protocol_of
from .training import fit


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


@dataclass
class _Folds:
    """The posts a run trains on and how they are split: k stratified folds, or one fixed split."""

    split: Split
    folds: list[tuple[np.ndarray, np.ndarray]]  # (train_idx, val_idx) per fold
    fixed_split: bool

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor(self.split.labels, dtype=torch.long)

    def fold_of(self) -> np.ndarray:
        """(N,) the fold that scores each post."""
        return fold_assignment(self.folds, len(self.split.records))

    def scored(self) -> np.ndarray:
        """Indices of the posts some fold scores, sorted (every post for k-fold CV)."""
        return np.sort(np.concatenate([val_idx for _, val_idx in self.folds]))


def _plan_folds(config: RunConfig, split: Split, val_split: Split | None) -> _Folds:
    if val_split is None:
        return _Folds(split, stratified_folds(split.labels, config.train.folds, config.train.seed), False)
    train_size, joined = len(split.records), join_splits(split, val_split)
    return _Folds(joined, [(np.arange(train_size), np.arange(train_size, len(joined.records)))], True)


@dataclass
class _FoldTrainer:
    """Trains (or, on resume, takes back) one fold after another of a run."""

    config: RunConfig
    towers: Towers
    features: dict[str, torch.Tensor]
    plan: _Folds
    fingerprint: str
    out_dir: Path
    device: torch.device
    resume: bool
    log: object

    def run(self, fold: int) -> tuple[dict, np.ndarray]:
        """(metrics row, val probabilities (V, C)) of ``fold``, trained now or finished earlier."""
        train_idx, val_idx = self.plan.folds[fold]
        folder, n = fold_dir(self.out_dir, fold), len(self.plan.folds)
        finished = finished_fold(folder, self.fingerprint, len(val_idx)) if self.resume else None
        if finished is not None:
            (folder / CHECKPOINT_FILE).unlink(missing_ok=True)  # left behind if the run stopped right after the fold
            self.log(f"fold {fold + 1}/{n}: finished earlier; kept")
            return finished["row"], np.asarray(finished["val_probs"], dtype=np.float32)
        epochs_done = _check_checkpoint(folder / CHECKPOINT_FILE, self.fingerprint, fold)
        if epochs_done:
            self.log(f"fold {fold + 1}/{n}: resuming after epoch {epochs_done} (checkpoint)")
        return self._train(fold, train_idx, val_idx, folder)

    def _train(self, fold: int, train_idx, val_idx, folder: Path) -> tuple[dict, np.ndarray]:
        config, labels = self.config, self.plan.labels
        seed_everything(config.train.seed + fold)
        model = MultimodalClassifier(config, self.towers)
        fit_idx, select_idx = selection_split(self.plan.split.labels, train_idx, val_idx, config.train, fold,
                                              fixed=self.plan.fixed_split)
        result = fit(model, self.features, labels, fit_idx, select_idx, config.train, self.device,
                     desc=f"fold {fold + 1}/{len(self.plan.folds)}", checkpoint=folder / CHECKPOINT_FILE,
                     checkpoint_info={"data": self.fingerprint, "fold": fold})
        save_tensors(folder / MODEL_FILE, result.best_state, metadata={"mmsent_version": __version__, "fold": str(fold)})
        atomic_write_json(folder / HISTORY_FILE, result.history)
        if select_idx is val_idx:  # the chosen epoch's probabilities of the scored posts are already there
            val_probs = result.val_probs
        else:  # the scored fold is predicted once, by the weights chosen on the inner part
            val_probs = score_fold(model, result.best_state, self.features, val_idx, config, self.device)
        scores = classification_metrics(labels[val_idx].numpy(), val_probs.argmax(1), run_labels(config))
        row = {"fold": fold, "accuracy": scores["accuracy"], "weighted_f1": scores["weighted_f1"],
               "macro_f1": scores["macro_f1"], "best_epoch": result.best_epoch, "epochs_run": len(result.history),
               "train_size": int(len(fit_idx)), "selection_size": int(len(select_idx)),
               "val_size": int(len(val_idx))}
        write_fold_result(folder, row, val_probs, self.fingerprint)  # marks the fold finished
        (folder / CHECKPOINT_FILE).unlink(missing_ok=True)  # then the (large) checkpoint goes
        return row, val_probs


def _check_checkpoint(path: Path, fingerprint: str, fold: int) -> int:
    """Epochs finished in ``path`` (0 if absent); refuses a checkpoint of other data or another fold."""
    if not path.is_file():
        return 0
    info = read_info(path)
    if info.get("data") != fingerprint or info.get("fold") != fold:
        raise RunError(f"{path} was written for other data or another fold; resume with the same --data, "
                       "or pass --overwrite to start again")
    return int(info["epoch"])


def _shared_features(shard: Shard, towers: Towers, split: Split, config: RunConfig, log,
                     fingerprint: str) -> dict[str, torch.Tensor]:
    """Every post's frozen features; under torchrun the main process fills the cache and the others read it."""
    if not shard.is_main:
        shard.barrier()
    features = compute_features(towers.present(), split, config.text_prep, config.train.workers, log, fingerprint)
    if shard.is_main:
        shard.barrier()
    return features


def _gather_folds(trainer: _FoldTrainer, shard: Shard, n_classes: int) -> tuple[list[dict], np.ndarray]:
    """Train this process's folds, then read back the other processes' -> (fold rows, out-of-fold probs (N, C))."""
    plan = trainer.plan
    oof = np.zeros((len(plan.split.records), n_classes), dtype=np.float32)
    rows: list[dict | None] = [None] * len(plan.folds)
    for fold, (_, val_idx) in enumerate(plan.folds):
        if shard.owns(fold):
            rows[fold], oof[val_idx] = trainer.run(fold)
            _log_fold(trainer.log, rows[fold], len(plan.folds))
    shard.barrier()  # every process has written its folds
    for fold, (_, val_idx) in enumerate(plan.folds):
        if rows[fold] is not None:
            continue
        finished = finished_fold(fold_dir(trainer.out_dir, fold), trainer.fingerprint, len(val_idx))
        if finished is None:
            raise RunError(f"fold {fold + 1} was assigned to process {fold % shard.world_size}, which did not "
                           "write its result; run again with --resume")
        rows[fold], oof[val_idx] = finished["row"], np.asarray(finished["val_probs"], dtype=np.float32)
        _log_fold(trainer.log, rows[fold], len(plan.folds), f" (process {fold % shard.world_size})")
    return rows, oof


def train_cv(config: RunConfig, split: Split, out_dir: Path, log=print, resume: bool = False,
             overwrite: bool = False, val_split: Split | None = None) -> dict:
    """Cross-validate ``config`` on ``split``; writes the run folder and returns its metrics.

    ``resume``: continue the interrupted run in ``out_dir`` (same config); ``overwrite``: replace a run there.
    ``val_split``: the fixed-split protocol instead of folds: one model trained on ``split``, its epoch chosen on
    ``val_split`` (whose figures are then what metrics.json reports, as validation figures).
    Under ``torchrun`` each process trains its share of the folds (see :mod:`mmsent.distributed`).
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    check_selection(config.train)
    config = with_labels(config, split)
    plan = _plan_folds(config, split, val_split)
    shard = current_shard()
    log = shard.report(log)
    if shard.is_main:
        prepare_run_dir(out_dir, config, resume, overwrite)
    shard.barrier()
    device = shard.device(resolve_device(config.train.device))
    seed_everything(config.train.seed)
    towers = load_towers(config, device, log)
    fingerprint = plan.split.fingerprint()
    features = _shared_features(shard, towers, plan.split, config, log, fingerprint)
    feature_seconds = time.perf_counter() - start
    trainer = _FoldTrainer(config, towers, features, plan, fingerprint, out_dir, device, resume, log)
    classes = run_labels(config)
    rows, oof = _gather_folds(trainer, shard, len(classes))
    scored, labels = plan.scored(), plan.labels.numpy()
    calibration, decision = _fit_on_oof(oof[scored], labels[scored], plan.fold_of()[scored], config, classes)
    metrics = {
        "protocol": protocol_of(config.train, plan.fixed_split),
        "cv": cv_summary(rows),
        "folds": rows,
        "out_of_fold": classification_metrics(labels[scored], oof[scored].argmax(1), classes),
        "calibration": calibration.summary(),
        **({"decision": decision.to_dict()} if decision.rule != "accuracy" else {}),
        "data": data_summary(plan.split, features),
        "feature_seconds": feature_seconds,
        "wall_seconds": time.perf_counter() - start,
        "device": str(device),
        "mmsent_version": __version__,
        **({"processes": shard.world_size} if shard.world_size > 1 else {}),
    }
    if shard.is_main:
        _write_results(out_dir, metrics, calibration, decision,
                       OutOfFold([plan.split.guids[i] for i in scored], [classes[plan.split.labels[i]] for i in scored],
                                 oof[scored], classes))
    return metrics


def _write_results(out_dir: Path, metrics: dict, calibration, decision: DecisionRule, oof: OutOfFold) -> None:
    write_calibration_dict(out_dir, calibration.to_dict())
    if decision.rule != "accuracy":
        write_decision_dict(out_dir, decision.to_dict())
    write_metrics(out_dir, metrics)
    write_oof(out_dir, oof)


def _fit_on_oof(probs: np.ndarray, labels: np.ndarray, fold_of: np.ndarray, config: RunConfig, classes):
    """What is fitted on a run's out-of-fold probabilities (N, C): its calibration and its decision rule."""
    return (fit_calibration(probs, labels, fold_of),
            fit_decision(probs, labels, fold_of, config.train.decision, classes))


def with_labels(config: RunConfig, split: Split) -> RunConfig:
    """``config`` with the data's label set recorded (``data.labels``), which the model's head, the metrics and
    every prediction read; refuses a config whose recorded label set differs from the data's."""
    recorded = normalised_labels(config.data.labels)
    if recorded and recorded != tuple(split.label_names):
        raise DataError(f"the data's labels ({', '.join(split.label_names)}) differ from the config's data.labels "
                        f"({', '.join(recorded)})")
    config = RunConfig.from_dict(config.to_dict())
    config.data.labels = list(split.label_names)
    return config


def data_summary(split: Split, features: dict[str, torch.Tensor]) -> dict:
    """What a run was trained on and what was repaired or worked around (metrics.json's ``data``)."""
    repairs = split.summary()
    return {
        "posts": len(split.records), "label_counts": split.label_counts(),
        "text_encodings": dict(split.encodings),
        "images_unusable": int((~features["image_present"]).sum()) if "image_present" in features else 0,
        "texts_unusable": len(split.guids_with("text_missing", "text_empty")),
        "texts_fallback_encoding": repairs["text_fallback_encoding"],
        "texts_truncated": repairs["text_truncated"], "rows_dropped": repairs["row_dropped"],
        "headers_missing": repairs["header_missing"],
        "warnings": len([p for p in split.problems if not p.fatal]),
    }


def check_selection(config: TrainConfig) -> None:
    """Refuse an inner validation share that cannot be one (before anything is loaded or trained)."""
    if config.select_on == "inner" and not 0 < config.inner_val < 1:
        raise ConfigError(f"train.inner_val must be between 0 and 1 (a share of each training fold), got "
                          f"{config.inner_val}; or choose on the scored fold with --select-on scored_fold")


def selection_split(labels, train_idx: np.ndarray, val_idx: np.ndarray, config: TrainConfig, fold: int,
                    fixed: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(posts trained on, posts early stopping chooses on) for one fold.

    ``select_on=inner``: a stratified ``inner_val`` share of ``train_idx`` is held out and chooses; the scored fold
    ``val_idx`` is never looked at. ``scored_fold`` (or a fixed split, whose validation file is the choosing set):
    ``(train_idx, val_idx)`` itself.
    """
    if fixed or config.select_on == "scored_fold":
        return train_idx, val_idx
    check_selection(config)
    from sklearn.model_selection import train_test_split

    train_idx = np.asarray(train_idx)
    fold_labels = np.asarray(labels)[train_idx]
    # at least one post of every class (a small fold's share could hold fewer posts than there are classes)
    size = max(math.ceil(config.inner_val * len(train_idx)), len(np.unique(fold_labels)))
    try:
        fit_idx, select_idx = train_test_split(train_idx, test_size=size, stratify=fold_labels,
                                               random_state=(config.seed + fold) % 2**32)
    except ValueError as error:
        raise ConfigError(f"cannot hold out a stratified {config.inner_val:g} of a training fold of "
                          f"{len(train_idx)} posts for early stopping ({error}); raise --inner-val, use fewer "
                          "--folds, or --select-on scored_fold") from None
    return np.sort(fit_idx), np.sort(select_idx)


def score_fold(model: MultimodalClassifier, state: dict, features: dict, val_idx: np.ndarray, config: RunConfig,
               device: torch.device) -> np.ndarray:
    """Class probabilities (V, C) of the scored fold from the chosen weights ``state`` (no labels read)."""
    model.load_state_dict(state, strict=True)
    model.to(device)
    batches = FeatureBatches(features, None, val_idx, max(config.train.batch_size, 64),
                             pin_memory=device.type == "cuda")
    probs, _ = predict_probs([model], batches, config.train.loss, device)
    return probs


def join_splits(train: Split, val: Split) -> Split:
    """The posts of a training and a validation file of one data folder, training ones first; they must not
    share a post."""
    shared = set(train.guids) & set(val.guids)
    if shared:
        raise DataError(f"{len(shared)} posts are in both the training and the validation file (e.g. "
                        f"{sorted(shared)[0]}); the validation posts must be held out")
    if Path(train.data_dir).resolve() != Path(val.data_dir).resolve():
        raise DataError("the training and the validation file must name posts of the same data folder")
    unknown = sorted(set(val.label_names) - set(train.label_names))
    if unknown:
        raise DataError(f"the validation posts hold labels the training posts lack: {', '.join(unknown)}")
    return Split(train.data_dir, train.records + val.records, problems=train.problems + val.problems,
                 label_names=train.label_names)


def _log_fold(log, row: dict, folds: int, suffix: str = "") -> None:
    log(f"fold {row['fold'] + 1}/{folds}: accuracy {row['accuracy']:.4f}  weighted F1 {row['weighted_f1']:.4f}  "
        f"macro F1 {row['macro_f1']:.4f}  (best epoch {row['best_epoch']} of {row['epochs_run']}){suffix}")
