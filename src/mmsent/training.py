"""The one training loop: batches of cached features, loss, optimiser + schedule, early stopping, best weights."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .checkpoint import flatten_optimizer_state, load_checkpoint, save_checkpoint, unflatten_optimizer_state
from .config import TrainConfig
from .errors import ConfigError
from .inference import FeatureBatches, autocast_for, predict_probs, to_device
from .losses import create_loss, supervised_contrastive
from .metrics import classification_metrics
from .progress import progress

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


@dataclass
class FitResult:
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    history: list[dict] = field(default_factory=list)
    val_probs: np.ndarray | None = None


def _warmup_cosine(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    warmup = max(1, int(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def _save_state(path: Path, epoch: int, model: nn.Module, optimizer, scheduler, batches: FeatureBatches,
                best: FitResult, best_accuracy: float, stale: int, device: torch.device, info: dict,
                ema: nn.Module | None = None) -> None:
    """Everything the loop needs to continue after ``epoch`` exactly as if it had never stopped."""
    optim_tensors, optim_structure = flatten_optimizer_state(optimizer.state_dict())
    rng = {"torch": torch.get_rng_state()}  # (S,) uint8: drives dropout
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    groups = {
        "model": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
        "best": dict(best.best_state),
        "optim": optim_tensors,
        "rng": rng,
        "val": {"probs": torch.from_numpy(best.val_probs)},  # (V, C) of the best epoch
    }
    if ema is not None:
        groups["ema"] = {k: v.detach().to("cpu", copy=True) for k, v in ema.state_dict().items()}
    scheduler_state = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    save_checkpoint(path, groups, {
        **info, "epoch": epoch, "best_epoch": best.best_epoch, "best_accuracy": best_accuracy, "stale": stale,
        "history": best.history, "optimizer": optim_structure, "scheduler": scheduler_state,
        "batches_rng": batches.rng.bit_generator.state,
    })


def _restore_state(path: Path, model: nn.Module, optimizer, scheduler, batches: FeatureBatches,
                   device: torch.device, ema: nn.Module | None = None) -> tuple[int, FitResult, float, int]:
    """Load a checkpoint of :func:`_save_state` into the live objects -> (epoch, best, best_accuracy, stale)."""
    groups, info = load_checkpoint(path)
    model.load_state_dict(groups["model"], strict=True)
    if ema is not None:
        ema.load_state_dict(groups["ema"], strict=True)
    optimizer.load_state_dict(unflatten_optimizer_state(groups.get("optim", {}), info["optimizer"]))
    scheduler.load_state_dict({**info["scheduler"], "lr_lambdas": [None] * len(scheduler.lr_lambdas)})
    batches.rng.bit_generator.state = info["batches_rng"]
    torch.set_rng_state(groups["rng"]["torch"])
    if device.type == "cuda" and "cuda" in groups["rng"]:
        torch.cuda.set_rng_state(groups["rng"]["cuda"], device)
    best = FitResult(best_state=groups["best"], best_epoch=info["best_epoch"], history=info["history"],
                     val_probs=groups["val"]["probs"].numpy())
    return info["epoch"], best, info["best_accuracy"], info["stale"]


def _make_optimizer(config: TrainConfig, groups: list[dict]) -> torch.optim.Optimizer:
    """Adam/AdamW, fused (one kernel for the whole update) where this torch build supports it for the parameters' device."""
    if config.optimizer not in OPTIMIZERS:
        raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}")
    try:
        return OPTIMIZERS[config.optimizer](groups, weight_decay=config.weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return OPTIMIZERS[config.optimizer](groups, weight_decay=config.weight_decay)


def _parameter_groups(model: nn.Module, config: TrainConfig) -> list[dict]:
    """Optimizer groups: the fusion and head at ``lr``; pretrained encoder layers at ``encoder_lr`` times
    ``layer_lr_decay`` to the power of their depth below their encoder's top layer (one group per rate)."""
    if not 0 < config.layer_lr_decay <= 1:
        raise ConfigError(f"train.layer_lr_decay must be in (0, 1], got {config.layer_lr_decay}")
    by_rate: dict[float, list[nn.Parameter]] = {}
    for depth, params in model.encoder_parameter_groups():
        by_rate.setdefault(config.encoder_lr * config.layer_lr_decay ** depth, []).extend(params)
    rate_of = {id(p): lr for lr, params in by_rate.items() for p in params}
    trainable = [p for p in model.parameters() if p.requires_grad]  # each group keeps this order (checkpoints)
    groups = [{"params": [p for p in trainable if id(p) not in rate_of], "lr": config.lr}]
    groups += [{"params": [p for p in trainable if rate_of.get(id(p)) == lr], "lr": lr} for lr in by_rate]
    return [g for g in groups if g["params"]]


def _make_ema(model: nn.Module, decay: float) -> nn.Module | None:
    """An exponential moving average of ``model``'s weights and buffers (None when ``decay`` is 0)."""
    if not decay:
        return None
    if not 0.0 < decay < 1.0:
        raise ConfigError(f"train.ema_decay must be between 0 and 1, got {decay}")
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


@contextlib.contextmanager
def cudnn_benchmark(enabled: bool):
    """cuDNN's benchmark mode (image batches of one fixed shape: pick the fastest kernels once) for the block only."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = previous or enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


@dataclass
class _Loop:
    """What one training run works with: the model, its optimisation and the batches."""

    model: nn.Module
    evaluated: nn.Module  # what is validated and kept: the EMA of the model's weights, or the model itself
    ema: nn.Module | None
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    train_batches: FeatureBatches
    val_batches: FeatureBatches
    device: torch.device
    supcon_weight: float = 0.0  # weight of the supervised contrastive term (train.supcon_weight)
    supcon_temperature: float = 0.1


def _make_loop(model: nn.Module, features: dict, labels: torch.Tensor, train_idx, val_idx, config: TrainConfig,
               device: torch.device) -> _Loop:
    model.to(device)
    n_classes = model.n_classes
    train_labels = labels[torch.as_tensor(np.asarray(train_idx))]
    loss_fn = create_loss(config, torch.bincount(train_labels, minlength=n_classes)).to(device)
    optimizer = _make_optimizer(config, _parameter_groups(model, config))
    on_gpu = device.type == "cuda"
    train_batches = FeatureBatches(features, labels, train_idx, config.batch_size, shuffle=True, seed=config.seed,
                                   pin_memory=on_gpu)
    val_batches = FeatureBatches(features, labels, val_idx, max(config.batch_size, 64), pin_memory=on_gpu)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _warmup_cosine(config.epochs * len(train_batches), config.warmup_ratio))
    ema = _make_ema(model, config.ema_decay)
    if config.supcon_weight < 0 or config.supcon_temperature <= 0:
        raise ConfigError(f"train.supcon_weight must be >= 0 and train.supcon_temperature > 0, got "
                          f"{config.supcon_weight} and {config.supcon_temperature}")
    return _Loop(model, ema.module if ema is not None else model, ema, loss_fn, optimizer, scheduler,
                 train_batches, val_batches, device, config.supcon_weight, config.supcon_temperature)


def _train_epoch(loop: _Loop, desc: str) -> tuple[float, float]:
    """One pass over the training batches -> (mean loss, accuracy)."""
    loop.model.train()
    autocast = autocast_for(loop.device)
    running, seen, correct = 0.0, 0, 0
    bar = progress(loop.train_batches, desc=desc, unit="batch")
    for batch, targets, _ in bar:
        targets = targets.to(loop.device)
        with autocast:
            if loop.supcon_weight:
                fused = loop.model.represent(to_device(batch, loop.device))  # (B, F)
                logits = loop.model.head(fused).float()  # (B, C)
            else:
                logits = loop.model(to_device(batch, loop.device)).float()  # (B, C)
        loss = loop.loss_fn(logits, targets)
        if loop.supcon_weight:
            loss = loss + loop.supcon_weight * supervised_contrastive(fused, targets, loop.supcon_temperature)
        loop.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(loop.model.parameters(), 1.0)
        loop.optimizer.step()
        loop.scheduler.step()
        if loop.ema is not None:
            loop.ema.update_parameters(loop.model)
        running += float(loss.detach()) * len(targets)
        correct += int((logits.detach().argmax(1) == targets).sum())
        seen += len(targets)
        bar.set_postfix(loss=f"{running / seen:.4f}")
    return running / max(seen, 1), correct / max(seen, 1)


def fit(model: nn.Module, features: dict, labels: torch.Tensor, train_idx, val_idx, config: TrainConfig,
        device: torch.device, desc: str = "train", on_epoch_end: Callable[[dict], None] | None = None,
        checkpoint: Path | None = None, checkpoint_info: dict | None = None) -> FitResult:
    """Train ``model`` with early stopping on validation accuracy; returns the best epoch's weights.

    With ``checkpoint``, the whole training state (weights, optimizer, schedule, best epoch so far, early-stopping
    counters, torch and batch-order RNG states) is written there atomically after every epoch, with
    ``checkpoint_info`` added to its JSON; if the file exists when ``fit`` starts, training continues from it and
    ends exactly as an uninterrupted run would.
    """
    loop = _make_loop(model, features, labels, train_idx, val_idx, config, device)
    best = FitResult(best_state={}, best_epoch=0)
    best_accuracy, stale, done = -1.0, 0, 0
    if checkpoint is not None and Path(checkpoint).is_file():
        done, best, best_accuracy, stale = _restore_state(checkpoint, model, loop.optimizer, loop.scheduler,
                                                          loop.train_batches, device, loop.ema)
        if stale >= config.patience:  # it had already stopped early
            done = config.epochs
    val_labels = labels[torch.as_tensor(np.asarray(val_idx))].numpy()
    with cudnn_benchmark(device.type == "cuda"):
        for epoch in range(done + 1, config.epochs + 1):
            start = time.perf_counter()
            train_loss, train_accuracy = _train_epoch(loop, f"{desc} epoch {epoch}")
            probs, val_loss = predict_probs([loop.evaluated], loop.val_batches, config.loss, device, loop.loss_fn)
            scores = classification_metrics(val_labels, probs.argmax(1), model.n_classes)
            record = {"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_accuracy,
                      "val_loss": val_loss, "val_accuracy": scores["accuracy"],
                      "val_weighted_f1": scores["weighted_f1"], "val_macro_f1": scores["macro_f1"],
                      "seconds": time.perf_counter() - start}
            best.history.append(record)
            if scores["accuracy"] > best_accuracy:
                best_accuracy, stale = scores["accuracy"], 0
                best.best_state = {k: v.detach().to("cpu", copy=True) for k, v in loop.evaluated.state_dict().items()}
                best.best_epoch, best.val_probs = epoch, probs
            else:
                stale += 1
            if checkpoint is not None:
                _save_state(checkpoint, epoch, model, loop.optimizer, loop.scheduler, loop.train_batches, best,
                            best_accuracy, stale, device, checkpoint_info or {}, loop.ema)
            if on_epoch_end is not None:
                on_epoch_end(record)
            if stale >= config.patience:
                break
    return best
