"""Losses registered by name: sigmoid focal loss (per-class alpha) and cross-entropy (label smoothing, class
weights); either can be logit-adjusted by the training fold's class prior."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig
from .errors import ConfigError
from .registry import LOSSES


@LOSSES.register("focal", config=TrainConfig)
class SigmoidFocalLoss(nn.Module):
    """Sigmoid focal loss (Lin et al., 2017) over one-hot targets, averaged over the batch.

    ``alpha`` weights the positive term per class (default 0.25 for each), ``gamma`` down-weights easy examples.
    """

    def __init__(self, config: TrainConfig, class_counts: torch.Tensor):
        super().__init__()
        if config.class_weight_power:
            raise ConfigError("train.class_weight_power weights the cross-entropy loss; focal loss weighs classes "
                             "with train.focal_alpha")
        n_classes = len(class_counts)
        alpha = config.focal_alpha or [0.25] * n_classes
        if len(alpha) != n_classes:
            raise ConfigError(f"train.focal_alpha needs {n_classes} values (one per class), got {len(alpha)}")
        self.register_buffer("alpha", torch.tensor(alpha, dtype=torch.float32))
        self.gamma = config.focal_gamma

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:  # (B, C), (B,)
        onehot = F.one_hot(targets, logits.shape[-1]).to(logits.dtype)  # (B, C)
        p = torch.sigmoid(logits)
        ce = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
        p_t = p * onehot + (1 - p) * (1 - onehot)
        alpha_t = self.alpha * onehot + (1 - self.alpha) * (1 - onehot)
        return (alpha_t * (1 - p_t) ** self.gamma * ce).sum(-1).mean()


@LOSSES.register("cross_entropy", config=TrainConfig)
class CrossEntropyLoss(nn.Module):
    """Softmax cross-entropy with optional label smoothing and class weights (N / (C * n_c)) ** power."""

    def __init__(self, config: TrainConfig, class_counts: torch.Tensor | None = None):
        super().__init__()
        self.smoothing = config.label_smoothing
        weight = None
        if config.class_weight_power and class_counts is not None:
            counts = _nonzero_counts(class_counts)  # (C,)
            weight = (counts.sum() / (len(counts) * counts)) ** config.class_weight_power
        self.register_buffer("weight", weight)

    def forward(self, logits, targets):
        return F.cross_entropy(logits, targets, weight=self.weight, label_smoothing=self.smoothing)


def _nonzero_counts(class_counts) -> torch.Tensor:
    """Posts per class (C,) as floats, a class absent from the training fold counted once (no division by 0)."""
    return torch.as_tensor(class_counts).float().clamp_min(1)


class LogitAdjusted(nn.Module):
    """``loss(logits + tau * log(prior), targets)``: training pushes the rare classes' margins up, and the plain
    logits, which predictions use, then favour them less than the prior would (Menon et al., ICLR 2021)."""

    def __init__(self, loss: nn.Module, tau: float, class_counts: torch.Tensor):
        super().__init__()
        self.loss = loss
        counts = _nonzero_counts(class_counts)
        prior = counts / counts.sum()  # (C,)
        self.register_buffer("offset", tau * prior.log())

    def forward(self, logits, targets):  # (B, C), (B,)
        return self.loss(logits + self.offset, targets)


def create_loss(config: TrainConfig, class_counts: torch.Tensor) -> nn.Module:
    """The loss ``config.loss`` names; ``class_counts`` (C,): the training fold's posts per class, which also gives
    the number of classes; read by class weights and logit adjustment."""
    for name in ("class_weight_power", "logit_adjustment"):
        if getattr(config, name) < 0:
            raise ConfigError(f"train.{name} must be >= 0, got {getattr(config, name)}")
    counts = torch.as_tensor(class_counts)
    loss = LOSSES.create(config.loss, config, counts)
    return LogitAdjusted(loss, config.logit_adjustment, counts) if config.logit_adjustment else loss


def supervised_contrastive(features: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al., NeurIPS 2020) of a batch: each post's L2-normalised
    representation is pulled towards those of the other posts of its class and pushed from the rest. ``features``
    (B, F), ``targets`` (B,); posts without another post of their class in the batch do not count (0 if none has)."""
    z = F.normalize(features.float(), dim=-1)  # (B, F)
    similarity = z @ z.T / temperature  # (B, B)
    self_pair = torch.eye(len(z), dtype=torch.bool, device=z.device)
    similarity = similarity.masked_fill(self_pair, float("-inf"))
    log_prob = similarity - torch.logsumexp(similarity, dim=1, keepdim=True)  # (B, B): log p(j | i), j != i
    positive = (targets[:, None] == targets[None, :]) & ~self_pair  # (B, B)
    n_positive = positive.sum(1)  # (B,)
    has_positive = n_positive > 0
    if not bool(has_positive.any()):
        return features.sum() * 0.0
    mean_log_prob = log_prob.masked_fill(~positive, 0.0).sum(1)[has_positive] / n_positive[has_positive]
    return -mean_log_prob.mean()


def probabilities(loss_name: str, logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities consistent with how the loss reads logits (sigmoid scores renormalised for focal)."""
    if loss_name == "focal":
        scores = torch.sigmoid(logits)
        return scores / scores.sum(-1, keepdim=True).clamp_min(1e-12)
    return torch.softmax(logits, dim=-1)
