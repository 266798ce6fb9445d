"""Losses registered by name: sigmoid focal loss (per-class alpha) and cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import LABELS, TrainConfig
from .registry import LOSSES


@LOSSES.register("focal")
class SigmoidFocalLoss(nn.Module):
    """Sigmoid focal loss (Lin et al., 2017) over one-hot targets, averaged over the batch.

    ``alpha`` weights the positive term per class (default 0.25 for each), ``gamma`` down-weights easy examples.
    """

    def __init__(self, config: TrainConfig):
        super().__init__()
        alpha = config.focal_alpha or [0.25] * len(LABELS)
        if len(alpha) != len(LABELS):
            raise ValueError(f"focal_alpha needs {len(LABELS)} values (one per label), got {len(alpha)}")
        self.register_buffer("alpha", torch.tensor(alpha, dtype=torch.float32))
        self.gamma = config.focal_gamma

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:  # (B, C), (B,)
        onehot = F.one_hot(targets, logits.shape[-1]).to(logits.dtype)  # (B, C)
        p = torch.sigmoid(logits)
        ce = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
        p_t = p * onehot + (1 - p) * (1 - onehot)
        alpha_t = self.alpha * onehot + (1 - self.alpha) * (1 - onehot)
        return (alpha_t * (1 - p_t) ** self.gamma * ce).sum(-1).mean()


@LOSSES.register("cross_entropy")
class CrossEntropyLoss(nn.Module):
    """Softmax cross-entropy with optional label smoothing."""

    def __init__(self, config: TrainConfig):
        super().__init__()
        self.smoothing = config.label_smoothing

    def forward(self, logits, targets):
        return F.cross_entropy(logits, targets, label_smoothing=self.smoothing)


def create_loss(config: TrainConfig) -> nn.Module:
    return LOSSES.create(config.loss, config)


def probabilities(loss_name: str, logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities consistent with how the loss reads logits (sigmoid scores renormalised for focal)."""
    if loss_name == "focal":
        scores = torch.sigmoid(logits)
        return scores / scores.sum(-1, keepdim=True).clamp_min(1e-12)
    return torch.softmax(logits, dim=-1)
