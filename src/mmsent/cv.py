"""Stratified k-fold training of one configuration -> a self-describing run folder.

Each fold's epoch is chosen by early stopping on a stratified inner part of its training posts
(``train.select_on=inner``, ``train.inner_val``); the fold itself is predicted once by the chosen weights, only to be
scored. ``select_on=scored_fold`` chooses on the scored fold (the first protocol, optimistic). With a validation
file instead of folds (the fixed-split protocol), one model is trained and chosen on that file.

RUN/
  config.json                     the RunConfig (everything needed to rebuild the model)
  metrics.json                    {"protocol": {...}, "cv": {...}, "folds": [...], "calibration": {...},
                                   "wall_seconds", "data": {...}}
  calibration.json                the temperature applied at prediction time and its figures (calibration.py)
  oof_predictions.csv             out-of-fold probabilities of every training post (fixed split: validation posts)
  folds/fold_K/model.safetensors  the trainable weights of fold K (best epoch)
  folds/fold_K/history.json       per-epoch train loss and accuracy, val loss, val accuracy / F1
  folds/fold_K/result.json        the finished fold's metrics row and validation probabilities (resume skips it)
  folds/fold_K/checkpoint.safetensors  training state after the last finished epoch (only while K is unfinished)

``train_cv(resume=True)`` continues an interrupted run: finished folds are kept, an unfinished one continues from
its checkpoint, and the run ends with the same metrics as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .checkpoint import read_info
from .calibration import CALIBRATION_FILE, fit_calibration, format_calibration
from .config import LABELS, ConfigError, RunConfig, TrainConfig
from .data.records import DataError
from .data.dataset import Split
from .data.folds import stratified_folds
from .distributed import current_shard
from .errors import UserError
from .features import load_or_compute
from .io import atomic_write_json, atomic_write_text, save_tensors
from .metrics import classification_metrics, format_mean_std
from .model import MultimodalClassifier, Towers, load_towers
from .training import FeatureBatches, fit, predict_probs, resolve_device


CHECKPOINT = "checkpoint.safetensors"
FOLD_FILES = ("model.safetensors", "history.json", "result.json", CHECKPOINT)
OOF_FILE = "oof_predictions.csv"
OOF_HEADER = "guid,label," + ",".join(f"p_{name}" for name in LABELS)
RUN_FILES = ("metrics.json", OOF_FILE)
# How to run, not what is trained: --resume may change them.
RESUMABLE_KEYS = ("train.device", "train.workers", "train.backend")


class RunError(UserError):
    """A run folder that cannot be used as asked; the message says why."""


def compute_features(towers: Towers, split: Split, config: RunConfig, log=print,
                     fingerprint: str | None = None) -> dict[str, torch.Tensor]:
    """Cached frozen features of every tower, merged into one dict of tensors indexed by post."""
    fingerprint = fingerprint or split.fingerprint()
    features = {}
    for tower in towers.present():
        features.update(load_or_compute(tower, split, config.text_prep, batch_size=tower.precompute_batch_size,
                                        workers=config.train.workers, log=log, fingerprint=fingerprint))
    return features


def trained_config(run_dir: Path) -> RunConfig:
    """The config a run was trained with, for continuing or reusing it: as ``read_run_config``, except that a run
    whose config.json predates ``train.select_on`` chose its epochs on the scored fold (``scored_fold``), so that
    it is never continued or reused as if it had chosen on an inner part."""
    from .predict import read_run_config

    config = read_run_config(run_dir)
    try:
        saved = json.loads((Path(run_dir) / "config.json").read_text(encoding="utf-8"))
        legacy = "select_on" not in saved.get("train", {})
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        legacy = False
    if legacy:
        config.train.select_on = "scored_fold"
    return config


def config_differences(saved: RunConfig, given: RunConfig) -> list[str]:
    """``key: saved -> given`` for every config key that differs and changes what is trained."""
    from .config import flatten

    old, new = flatten(saved.to_dict()), flatten(given.to_dict())
    return [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in sorted(set(old) | set(new))
            if key not in RESUMABLE_KEYS and old.get(key) != new.get(key)]


def _fold_dirs(out_dir: Path) -> list[Path]:
    return sorted(p for p in (out_dir / "folds").glob("fold_*") if p.is_dir())


def _remove_partial_writes(folder: Path, names) -> None:
    """Temporary files of atomic writes that a killed run left behind (``.NAME.*.tmp``, see io.atomic_path)."""
    for name in names:
        for leftover in folder.glob(f".{name}.*.tmp"):
            leftover.unlink(missing_ok=True)


def prepare_run_dir(out_dir: Path, config: RunConfig, resume: bool = False, overwrite: bool = False) -> None:
    """Make ``out_dir`` ready for ``config``: refuse to replace a run unless asked; clear old outputs when starting."""
    out_dir = Path(out_dir)
    for fold in _fold_dirs(out_dir):
        _remove_partial_writes(fold, FOLD_FILES)
    _remove_partial_writes(out_dir, (*RUN_FILES, "config.json"))
    if resume:
        if overwrite:
            raise RunError("--resume and --overwrite exclude each other: resume continues a run, overwrite restarts it")
        saved = trained_config(out_dir)
        changed = config_differences(saved, config)
        if changed:
            raise RunError(f"--resume continues {out_dir} with the config it was started with (config.json), but "
                           f"these settings differ from it: {'; '.join(changed)}. Drop those flags to resume, or "
                           "train a new run with another --out")
        return
    finished = (out_dir / "metrics.json").is_file()
    started = any((fold / name).is_file() for fold in _fold_dirs(out_dir) for name in FOLD_FILES)
    if (finished or started) and not overwrite:
        state = "a finished run (metrics.json)" if finished else "an unfinished run (fold checkpoints or results)"
        raise RunError(f"{out_dir} already holds {state}; refusing to overwrite it. Pass --resume to continue it, "
                       "--overwrite to replace it, or choose another --out")
    for fold in _fold_dirs(out_dir):  # only files a run writes: anything else in the folder is left alone
        for name in FOLD_FILES:
            (fold / name).unlink(missing_ok=True)
        if not any(fold.iterdir()):
            fold.rmdir()
    for name in RUN_FILES:
        (out_dir / name).unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    config.save(out_dir / "config.json")


def _finished_fold(fold_dir: Path, fingerprint: str, val_size: int) -> dict | None:
    """The saved result of a finished fold (None if it has not finished); refuses one trained on other data."""
    path = fold_dir / "result.json"
    if not path.is_file() or not (fold_dir / "model.safetensors").is_file():
        return None
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
        ok = isinstance(result, dict) and len(result["val_probs"]) == val_size
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        ok = False
    if not ok:
        return None  # unreadable (cannot come from an atomic write): train the fold again
    if result.get("data") != fingerprint:
        raise RunError(f"{fold_dir} was trained on other data than the --data given now (its content differs); "
                       "resume with the same data, or pass --overwrite to start again")
    return result


def _check_checkpoint(path: Path, fingerprint: str, fold: int) -> int:
    """Epochs finished in ``path`` (0 if absent); refuses a checkpoint of other data or another fold."""
    if not path.is_file():
        return 0
    info = read_info(path)
    if info.get("data") != fingerprint or info.get("fold") != fold:
        raise RunError(f"{path} was written for other data or another fold; resume with the same --data, "
                       "or pass --overwrite to start again")
    return int(info["epoch"])


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


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
    fixed_split = val_split is not None
    check_selection(config.train)
    if fixed_split:
        train_size, split = len(split.records), join_splits(split, val_split)
    protocol = protocol_of(config.train, fixed_split)
    shard = current_shard()
    log = shard.report(log)
    if shard.is_main:
        prepare_run_dir(out_dir, config, resume, overwrite)
    shard.barrier()
    device = shard.device(resolve_device(config.train.device))
    seed_everything(config.train.seed)
    towers = load_towers(config, device, log)
    fingerprint = split.fingerprint()
    if not shard.is_main:
        shard.barrier()  # the main process fills the feature cache first; the others then read it
    features = compute_features(towers, split, config, log, fingerprint)
    if shard.is_main:
        shard.barrier()
    feature_seconds = time.perf_counter() - start
    labels = torch.tensor(split.labels, dtype=torch.long)
    if fixed_split:
        folds = [(np.arange(train_size), np.arange(train_size, len(labels)))]
    else:
        folds = stratified_folds(split.labels, config.train.folds, config.train.seed)
    oof = np.zeros((len(labels), len(LABELS)), dtype=np.float32)
    fold_rows = [None] * len(folds)
    for fold, (train_idx, val_idx) in enumerate(folds):
        if not shard.owns(fold):
            continue
        fold_dir = out_dir / "folds" / f"fold_{fold}"
        checkpoint = fold_dir / CHECKPOINT
        finished = _finished_fold(fold_dir, fingerprint, len(val_idx)) if resume else None
        if finished is not None:
            checkpoint.unlink(missing_ok=True)  # left behind if the run stopped right after the fold finished
            row, val_probs = finished["row"], np.asarray(finished["val_probs"], dtype=np.float32)
            log(f"fold {fold + 1}/{len(folds)}: finished earlier; kept")
        else:
            epochs_done = _check_checkpoint(checkpoint, fingerprint, fold)
            if epochs_done:
                log(f"fold {fold + 1}/{len(folds)}: resuming after epoch {epochs_done} (checkpoint)")
            seed_everything(config.train.seed + fold)
            model = MultimodalClassifier(config, towers)
            fit_idx, select_idx = selection_split(split.labels, train_idx, val_idx, config.train, fold,
                                                  fixed=fixed_split)
            result = fit(model, features, labels, fit_idx, select_idx, config.train, device,
                         desc=f"fold {fold + 1}/{len(folds)}", checkpoint=checkpoint,
                         checkpoint_info={"data": fingerprint, "fold": fold})
            save_tensors(fold_dir / "model.safetensors", result.best_state,
                         metadata={"mmsent_version": __version__, "fold": str(fold)})
            atomic_write_json(fold_dir / "history.json", result.history)
            if select_idx is val_idx:  # the chosen epoch's probabilities of the scored posts are already there
                val_probs = result.val_probs
            else:  # the scored fold is predicted once, by the weights chosen on the inner part
                val_probs = score_fold(model, result.best_state, features, val_idx, config, device)
            scores = classification_metrics(labels[val_idx].numpy(), val_probs.argmax(1))
            row = {"fold": fold, "accuracy": scores["accuracy"], "weighted_f1": scores["weighted_f1"],
                   "macro_f1": scores["macro_f1"], "best_epoch": result.best_epoch, "epochs_run": len(result.history),
                   "train_size": int(len(fit_idx)), "selection_size": int(len(select_idx)),
                   "val_size": int(len(val_idx))}
            # result.json last: its presence marks the fold finished; then the (large) checkpoint goes
            atomic_write_json(fold_dir / "result.json",
                              {"row": row, "val_probs": val_probs.tolist(), "data": fingerprint})
            checkpoint.unlink(missing_ok=True)
        oof[val_idx] = val_probs
        fold_rows[fold] = row
        _log_fold(log, row, len(folds))
    shard.barrier()  # every process has written its folds
    for fold, (_, val_idx) in enumerate(folds):
        if fold_rows[fold] is None:  # trained by another process: read its result back from the run folder
            finished = _finished_fold(out_dir / "folds" / f"fold_{fold}", fingerprint, len(val_idx))
            if finished is None:
                raise RunError(f"fold {fold + 1} was assigned to process {fold % shard.world_size}, which did not "
                               "write its result; run again with --resume")
            fold_rows[fold] = finished["row"]
            oof[val_idx] = np.asarray(finished["val_probs"], dtype=np.float32)
            _log_fold(log, fold_rows[fold], len(folds), f" (process {fold % shard.world_size})")

    scored = np.sort(np.concatenate([val_idx for _, val_idx in folds]))  # every post for k-fold CV
    pooled = classification_metrics(labels.numpy()[scored], oof[scored].argmax(1))
    fold_of = np.zeros(len(labels), dtype=np.int64)
    for fold, (_, val_idx) in enumerate(folds):
        fold_of[val_idx] = fold
    calibration = fit_calibration(oof[scored], labels.numpy()[scored], fold_of[scored])
    image_missing = int((~features["image_present"]).sum()) if "image_present" in features else 0
    repairs = split.summary()
    metrics = {
        "protocol": protocol,
        "cv": cv_summary(fold_rows),
        "folds": fold_rows,
        "out_of_fold": pooled,
        "calibration": calibration.summary(),
        "data": {
            "posts": len(labels), "label_counts": split.label_counts(),
            "text_encodings": dict(split.encodings), "images_unusable": image_missing,
            "texts_unusable": len(split.guids_with("text_missing", "text_empty")),
            "texts_fallback_encoding": repairs["text_fallback_encoding"],
            "texts_truncated": repairs["text_truncated"], "rows_dropped": repairs["row_dropped"],
            "headers_missing": repairs["header_missing"],
            "warnings": len([p for p in split.problems if not p.fatal]),
        },
        "feature_seconds": feature_seconds,
        "wall_seconds": time.perf_counter() - start,
        "device": str(device),
        "mmsent_version": __version__,
    }
    if shard.world_size > 1:
        metrics["processes"] = shard.world_size
    if shard.is_main:
        atomic_write_json(out_dir / CALIBRATION_FILE, calibration.to_dict())
        atomic_write_json(out_dir / "metrics.json", metrics)
        write_oof(out_dir / OOF_FILE, [split.guids[i] for i in scored],
                  [LABELS[split.labels[i]] for i in scored], oof[scored])
    return metrics


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
    probs, _ = predict_probs(model, batches, config.train.loss, device)
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
    return Split(train.data_dir, train.records + val.records, problems=train.problems + val.problems)


def cv_summary(fold_rows: list[dict]) -> dict:
    """Mean and standard deviation over folds of accuracy, weighted F1 and macro F1 (``accuracy_mean`` ...)."""
    summary = {}
    for key in ("accuracy", "weighted_f1", "macro_f1"):
        values = np.array([row[key] for row in fold_rows])
        summary[f"{key}_mean"], summary[f"{key}_std"] = float(values.mean()), float(values.std())
    return summary


def write_oof(path: Path, guids: list[str], label_names: list[str], probs: np.ndarray) -> None:
    """``guid,label,p_negative,p_neutral,p_positive`` rows (OOF_HEADER) of out-of-fold probabilities, atomically."""
    rows = [OOF_HEADER] + [f"{guid},{name}," + ",".join(f"{v:.5f}" for v in p)
                           for guid, name, p in zip(guids, label_names, probs)]
    atomic_write_text(Path(path), "\n".join(rows) + "\n")


def _log_fold(log, row: dict, folds: int, suffix: str = "") -> None:
    log(f"fold {row['fold'] + 1}/{folds}: accuracy {row['accuracy']:.4f}  weighted F1 {row['weighted_f1']:.4f}  "
        f"macro F1 {row['macro_f1']:.4f}  (best epoch {row['best_epoch']} of {row['epochs_run']}){suffix}")


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
        f"data: {data['posts']} posts {data['label_counts']}; text encodings {data['text_encodings']}",
        f"data repaired or worked around: {data['images_unusable']} text only (image unusable), "
        f"{data.get('texts_unusable', 0)} image only (text missing or empty), "
        f"{data.get('texts_fallback_encoding', 0)} texts decoded with a fallback encoding (cp1252/latin-1), "
        f"{data.get('texts_truncated', 0)} texts truncated, {data.get('rows_dropped', 0)} label rows dropped, "
        f"{data.get('headers_missing', 0)} label file without header; {data['warnings']} warnings in all",
        f"wall time {metrics['wall_seconds']:.1f} s (features {metrics['feature_seconds']:.1f} s) on {metrics['device']}",
    ])
