"""The one inference loop over cached features: batches (length-bucketed), the device, class probabilities
averaged over models. Training (:mod:`mmsent.training`) and prediction (:mod:`mmsent.predict`, :mod:`mmsent.cv`)
both use it."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
from torch import nn

from .errors import ConfigError
from .losses import probabilities

TEXT_SEQUENCES = ("text_mask", "text_hidden", "text_ids")  # cached text tensors with the token axis second
SEQUENCES = {"text_mask": TEXT_SEQUENCES, "ocr_mask": ("ocr_mask", "ocr_hidden")}  # mask -> tensors it pads


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA GPU is available here")
    return torch.device(name)


class FeatureBatches:
    """Iterates over mini-batches of cached features for the given post indices.

    With text features, posts of similar token length are batched together (length bucketing), so each batch is
    padded only to its own longest text (short posts padded to the longest of a random batch waste most of its
    compute). Training batches are still drawn at random: posts are shuffled, sorted by length within
    windows of ``bucket_window`` batches, and the batches' order is shuffled again.

    ``pin_memory``: serve batches in page-locked memory, so that copies to a GPU run asynchronously.
    """

    def __init__(self, features: dict[str, torch.Tensor], labels: torch.Tensor | None, indices, batch_size: int,
                 shuffle: bool = False, seed: int = 0, bucket_window: int = 50, pin_memory: bool = False):
        self.features, self.labels, self.pin_memory = features, labels, pin_memory
        self.indices = np.asarray(indices)
        self.batch_size, self.shuffle, self.bucket_window = batch_size, shuffle, bucket_window
        self.rng = np.random.default_rng(seed)
        mask = features.get("text_mask")
        self.lengths = mask.sum(1).numpy() if mask is not None else None

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)

    def plan(self) -> list[np.ndarray]:
        """Positions (into ``indices``) of each batch, in the order they will be served."""
        positions = self.rng.permutation(len(self.indices)) if self.shuffle else np.arange(len(self.indices))
        if self.lengths is not None:
            window = self.batch_size * self.bucket_window
            lengths = self.lengths[self.indices]
            chunks = [positions[i:i + window] for i in range(0, len(positions), window)]
            positions = np.concatenate([c[np.argsort(lengths[c], kind="stable")] for c in chunks])
        batches = [positions[i:i + self.batch_size] for i in range(0, len(positions), self.batch_size)]
        if self.shuffle:
            batches = [batches[i] for i in self.rng.permutation(len(batches))]
        return batches

    def __iter__(self):
        """Yield (features, labels or None, positions) per batch."""
        for positions in self.plan():
            index = torch.as_tensor(self.indices[positions])
            batch = {name: tensor[index] for name, tensor in self.features.items()}
            for mask_name, names in SEQUENCES.items():  # cut the padding the whole batch shares from each sequence
                if mask_name in batch:
                    length = max(int(batch[mask_name].sum(1).max()), 1)
                    for name in names:
                        if name in batch:
                            batch[name] = batch[name][:, :length]
            if self.pin_memory:
                batch = {name: tensor.pin_memory() for name, tensor in batch.items()}
            yield batch, (self.labels[index] if self.labels is not None else None), positions


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}



@torch.inference_mode()
def predict_probs(models: list[nn.Module], batches: FeatureBatches, loss_name: str, device: torch.device,
                  loss_fn: nn.Module | None = None) -> tuple[np.ndarray, float]:
    """The one inference loop: class probabilities (N, C) averaged over ``models`` for every post of ``batches``,
    and the mean loss of the averaged probabilities' model when labels and ``loss_fn`` are given (one model).

    Each batch is gathered and converted to float once for all models."""
    for model in models:
        model.eval()
    probs: np.ndarray | None = None
    total, count = 0.0, 0
    autocast = autocast_for(device)
    for batch, labels, positions in batches:
        batch = {k: (v.float() if v.dtype == torch.float16 else v) for k, v in to_device(batch, device).items()}
        summed = 0.0
        for model in models:
            with autocast:
                logits = model(batch).float()  # (B, C)
            summed = summed + probabilities(loss_name, logits)
        if loss_fn is not None and labels is not None and len(models) == 1:
            total += float(loss_fn(logits, labels.to(device))) * len(labels)
            count += len(labels)
        batch_probs = (summed / len(models)).cpu().numpy()  # (B, C)
        if probs is None:
            probs = np.zeros((len(batches.indices), batch_probs.shape[1]), dtype=np.float32)
        probs[positions] = batch_probs
    if probs is None:
        probs = np.zeros((0, 0), dtype=np.float32)
    return probs, total / max(count, 1)


def autocast_for(device: torch.device):
    """A reusable context for forward passes: bf16 autocast on a GPU, nothing on the CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
