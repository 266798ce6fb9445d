"""Stratified k-fold training of one configuration -> a self-describing run folder.

RUN/
  config.json                     the RunConfig (everything needed to rebuild the model)
  metrics.json                    {"cv": {...}, "folds": [...], "wall_seconds", "data": {...}}
  oof_predictions.csv             out-of-fold probabilities of every training post
  folds/fold_K/model.safetensors  the trainable weights of fold K (best epoch)
  folds/fold_K/history.json       per-epoch train loss, val loss, val accuracy / F1
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .config import LABELS, RunConfig
from .data.dataset import Split
from .data.folds import stratified_folds
from .features import load_or_compute
from .io import atomic_write_json, atomic_write_text, save_tensors
from .metrics import classification_metrics
from .model import MultimodalClassifier, Towers, build_towers
from .training import fit, resolve_device


def compute_features(towers: Towers, split: Split, config: RunConfig, log=print) -> dict[str, torch.Tensor]:
    """Cached frozen features of every tower, merged into one dict of tensors indexed by post."""
    features = {}
    for tower in towers.present():
        features.update(load_or_compute(tower, split, config.text_prep, batch_size=tower.precompute_batch_size,
                                        workers=config.train.workers, log=log))
    return features


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def train_cv(config: RunConfig, split: Split, out_dir: Path, log=print) -> dict:
    """Cross-validate ``config`` on ``split``; writes the run folder and returns its metrics."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config.save(out_dir / "config.json")
    device = resolve_device(config.train.device)
    seed_everything(config.train.seed)
    towers = build_towers(config)
    features = compute_features(towers, split, config, log)
    feature_seconds = time.perf_counter() - start
    labels = torch.tensor(split.labels, dtype=torch.long)
    folds = stratified_folds(split.labels, config.train.folds, config.train.seed)
    oof = np.zeros((len(labels), len(LABELS)), dtype=np.float32)
    fold_rows = []
    for fold, (train_idx, val_idx) in enumerate(folds):
        seed_everything(config.train.seed + fold)
        model = MultimodalClassifier(config, towers)
        result = fit(model, features, labels, train_idx, val_idx, config.train, device,
                     desc=f"fold {fold + 1}/{len(folds)}")
        fold_dir = out_dir / "folds" / f"fold_{fold}"
        save_tensors(fold_dir / "model.safetensors", result.best_state,
                     metadata={"mmsent_version": __version__, "fold": str(fold)})
        atomic_write_json(fold_dir / "history.json", result.history)
        oof[val_idx] = result.val_probs
        scores = classification_metrics(labels[val_idx].numpy(), result.val_probs.argmax(1))
        row = {"fold": fold, "accuracy": scores["accuracy"], "weighted_f1": scores["weighted_f1"],
               "macro_f1": scores["macro_f1"], "best_epoch": result.best_epoch, "epochs_run": len(result.history),
               "train_size": int(len(train_idx)), "val_size": int(len(val_idx))}
        fold_rows.append(row)
        log(f"fold {fold + 1}/{len(folds)}: accuracy {row['accuracy']:.4f}  weighted F1 {row['weighted_f1']:.4f}  "
            f"macro F1 {row['macro_f1']:.4f}  (best epoch {row['best_epoch']} of {row['epochs_run']})")

    def mean_std(key):
        values = np.array([r[key] for r in fold_rows])
        return float(values.mean()), float(values.std())

    pooled = classification_metrics(labels.numpy(), oof.argmax(1))
    image_missing = int((~features["image_present"]).sum()) if "image_present" in features else 0
    metrics = {
        "cv": {
            "accuracy_mean": mean_std("accuracy")[0], "accuracy_std": mean_std("accuracy")[1],
            "weighted_f1_mean": mean_std("weighted_f1")[0], "weighted_f1_std": mean_std("weighted_f1")[1],
            "macro_f1_mean": mean_std("macro_f1")[0], "macro_f1_std": mean_std("macro_f1")[1],
        },
        "folds": fold_rows,
        "out_of_fold": pooled,
        "data": {
            "posts": len(labels), "label_counts": split.label_counts(),
            "text_encodings": dict(split.encodings), "images_unusable": image_missing,
            "warnings": len([p for p in split.problems if not p.fatal]),
        },
        "feature_seconds": feature_seconds,
        "wall_seconds": time.perf_counter() - start,
        "device": str(device),
        "mmsent_version": __version__,
    }
    atomic_write_json(out_dir / "metrics.json", metrics)
    rows = ["guid,label," + ",".join(f"p_{name}" for name in LABELS)]
    for guid, label, p in zip(split.guids, split.labels, oof):
        rows.append(f"{guid},{LABELS[label]}," + ",".join(f"{v:.5f}" for v in p))
    atomic_write_text(out_dir / "oof_predictions.csv", "\n".join(rows) + "\n")
    return metrics


def format_summary(metrics: dict) -> str:
    cv = metrics["cv"]
    data = metrics["data"]
    return "\n".join([
        f"{len(metrics['folds'])}-fold CV: accuracy {cv['accuracy_mean']:.4f} ± {cv['accuracy_std']:.4f}  "
        f"weighted F1 {cv['weighted_f1_mean']:.4f} ± {cv['weighted_f1_std']:.4f}  "
        f"macro F1 {cv['macro_f1_mean']:.4f} ± {cv['macro_f1_std']:.4f}",
        f"data: {data['posts']} posts {data['label_counts']}; text encodings {data['text_encodings']}; "
        f"unusable images (text only): {data['images_unusable']}; warnings: {data['warnings']}",
        f"wall time {metrics['wall_seconds']:.1f} s (features {metrics['feature_seconds']:.1f} s) on {metrics['device']}",
    ])
