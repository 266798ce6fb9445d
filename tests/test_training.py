"""The training loop's parts: batching, losses, metrics, early stopping."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmsent.config import LABELS, TrainConfig
from mmsent.inference import FeatureBatches, predict_probs
from mmsent.losses import CrossEntropyLoss, SigmoidFocalLoss, create_loss, probabilities
from mmsent.metrics import classification_metrics, format_mean_std
from mmsent.training import fit


def _text_features(n=50, length=12, dim=4, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, length + 1, size=n)
    mask = torch.arange(length)[None, :] < torch.as_tensor(lengths)[:, None]
    hidden = torch.randn(n, length, dim).half()
    return {"text_hidden": hidden, "text_mask": mask}, lengths


@pytest.mark.parametrize("shuffle", [True, False])
def test_batches_serve_every_post_once_and_cut_padding(shuffle):
    features, lengths = _text_features()
    indices = np.arange(3, 47)
    batches = FeatureBatches(features, torch.arange(50), indices, batch_size=8, shuffle=shuffle, seed=1, bucket_window=2)
    served = []
    for batch, labels, positions in batches:
        served.extend(indices[positions].tolist())
        assert torch.equal(labels, torch.as_tensor(indices[positions]))
        assert batch["text_hidden"].shape[1] == lengths[indices[positions]].max()  # padded to the batch's own max
    assert sorted(served) == indices.tolist()
    assert len(batches) == 6


def test_bucketing_reduces_padding():
    features, lengths = _text_features(n=400, length=40)
    plain = FeatureBatches(features, None, np.arange(400), 16, shuffle=True, seed=0, bucket_window=1)
    bucketed = FeatureBatches(features, None, np.arange(400), 16, shuffle=True, seed=0, bucket_window=25)
    padded = lambda b: sum(batch["text_hidden"].shape[1] * len(p) for batch, _, p in b)  # noqa: E731
    assert padded(bucketed) < 0.8 * padded(plain)


def test_predict_probs_averages_models_and_keeps_rows_in_input_order():
    features, _ = _text_features()

    class LengthModel(nn.Module):
        def forward(self, batch):  # logits encode each post's length
            length = batch["text_mask"].sum(1).float()
            return torch.stack([length, torch.zeros_like(length), -length], dim=1)

    batches = FeatureBatches(features, None, np.arange(50), 7)
    probs, _ = predict_probs([LengthModel()], batches, "cross_entropy", torch.device("cpu"))
    lengths = features["text_mask"].sum(1).float()
    expected = torch.softmax(torch.stack([lengths, torch.zeros_like(lengths), -lengths], 1), 1).numpy()
    assert np.allclose(probs, expected, atol=1e-6)

    class Uniform(nn.Module):
        def forward(self, batch):  # equal logits: probability 1/3 each
            return torch.zeros(len(batch["text_mask"]), 3)

    averaged, _ = predict_probs([LengthModel(), Uniform()], batches, "cross_entropy", torch.device("cpu"))
    assert np.allclose(averaged, (expected + 1 / 3) / 2, atol=1e-6)  # the mean of the two models' probabilities


def test_focal_loss_matches_its_formula():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, -0.3]])
    targets = torch.tensor([0, 2])
    loss = SigmoidFocalLoss(TrainConfig(focal_alpha=[0.25, 0.5, 0.75], focal_gamma=2.0), torch.ones(3))(logits, targets)
    onehot = F.one_hot(targets, 3).float()
    alpha = torch.tensor([0.25, 0.5, 0.75])
    total = 0.0
    for i in range(2):
        for c in range(3):
            p = torch.sigmoid(logits[i, c])
            if onehot[i, c]:
                total += -alpha[c] * (1 - p) ** 2 * torch.log(p)
            else:
                total += -(1 - alpha[c]) * p ** 2 * torch.log(1 - p)
    assert torch.allclose(loss, total / 2, atol=1e-6)
    with pytest.raises(ValueError, match="needs 3 values \\(one per class\\), got 1"):
        SigmoidFocalLoss(TrainConfig(focal_alpha=[0.5]), torch.ones(3))
    with pytest.raises(ValueError, match="needs 2 values"):  # a two-class data set
        SigmoidFocalLoss(TrainConfig(focal_alpha=[0.5, 0.5, 0.5]), torch.tensor([4, 6]))
    assert SigmoidFocalLoss(TrainConfig(), torch.tensor([4, 6])).alpha.tolist() == [0.25, 0.25]


def test_focal_gamma_zero_alpha_half_is_scaled_bce():
    logits, targets = torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0])
    loss = SigmoidFocalLoss(TrainConfig(focal_alpha=[0.5] * 3, focal_gamma=0.0), torch.ones(3))(logits, targets)
    bce = F.binary_cross_entropy_with_logits(logits, F.one_hot(targets, 3).float(), reduction="none").sum(1).mean()
    assert torch.allclose(loss, 0.5 * bce, atol=1e-6)


def test_cross_entropy_and_probabilities():
    logits, targets = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    assert torch.allclose(CrossEntropyLoss(TrainConfig())(logits, targets), F.cross_entropy(logits, targets))
    for name in ("focal", "cross_entropy"):
        p = probabilities(name, logits)
        assert torch.allclose(p.sum(1), torch.ones(4)) and (p >= 0).all()


def test_class_weights_and_logit_adjustment_match_their_formulas():
    logits, targets = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 2, 2])
    counts = torch.tensor([10, 30, 60])  # the training fold's posts per class
    balanced = create_loss(TrainConfig(class_weight_power=1.0), counts)
    weight = 100 / (3 * counts.float())  # rarer classes weigh more
    assert torch.allclose(balanced(logits, targets), F.cross_entropy(logits, targets, weight=weight))
    half = create_loss(TrainConfig(class_weight_power=0.5), counts)
    assert torch.allclose(half(logits, targets), F.cross_entropy(logits, targets, weight=weight.sqrt()))
    adjusted = create_loss(TrainConfig(logit_adjustment=1.0), counts)
    prior = counts.float() / 100
    assert torch.allclose(adjusted(logits, targets), F.cross_entropy(logits + prior.log(), targets))
    focal = create_loss(TrainConfig(loss="focal", logit_adjustment=2.0), counts)
    plain_focal = SigmoidFocalLoss(TrainConfig(), counts)
    assert torch.allclose(focal(logits, targets), plain_focal(logits + 2 * prior.log(), targets))
    assert torch.allclose(create_loss(TrainConfig(), counts)(logits, targets), F.cross_entropy(logits, targets))
    with pytest.raises(ValueError, match="focal_alpha"):
        create_loss(TrainConfig(loss="focal", class_weight_power=1.0), counts)
    with pytest.raises(ValueError, match="logit_adjustment must be >= 0"):
        create_loss(TrainConfig(logit_adjustment=-1.0), counts)


def test_logit_adjustment_moves_predictions_toward_the_rare_class():
    """Trained with the prior's log added to its logits, a model's plain logits favour the rare class more."""
    torch.manual_seed(0)
    n = 300
    labels = torch.tensor([0] * 30 + [2] * 270)  # class 0 rare, class 1 absent
    x = torch.randn(n, 4)  # the features carry no signal: only the prior can be learnt
    rare_share = []
    for tau in (0.0, 1.0):
        config = TrainConfig(epochs=5, patience=10, batch_size=32, lr=0.05, warmup_ratio=0.0, logit_adjustment=tau)
        torch.manual_seed(0)
        result = fit(_Linear(), {"x": x}, labels, np.arange(n), np.arange(n), config, torch.device("cpu"))
        rare_share.append(float(result.val_probs[:, 0].mean()))
    assert rare_share[0] < 0.2 < rare_share[1]  # about the prior 0.1 without, much more with the adjustment


def test_metrics_on_a_known_confusion():
    y_true = [0, 0, 1, 1, 2, 2, 2, 2]
    y_pred = [0, 1, 1, 1, 2, 2, 0, 2]
    m = classification_metrics(y_true, y_pred, LABELS)
    assert m["accuracy"] == pytest.approx(6 / 8)
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 3]]
    f1 = [0.5, 0.8, 6 / 7]  # per class: P/R = (1/2,1/2), (2/3,1), (1,3/4)
    assert m["macro_f1"] == pytest.approx(np.mean(f1))
    assert m["weighted_f1"] == pytest.approx((2 * f1[0] + 2 * f1[1] + 4 * f1[2]) / 8)
    assert m["per_class"]["neutral"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})


def test_metrics_keep_a_class_absent_from_labels_and_predictions():
    m = classification_metrics([0, 0, 2, 2], [0, 2, 2, 2], LABELS)  # no neutral post, none predicted neutral
    assert m["confusion"] == [[1, 0, 1], [0, 0, 0], [0, 0, 2]]
    assert m["per_class"]["neutral"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.0 + 0.8) / 3)  # the absent class counts as F1 0


def test_format_mean_std():
    assert format_mean_std(0.73054, 0.00736) == "0.7305 ± 0.0074"


class _Linear(nn.Module):
    n_classes = 3

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(4, 3)

    def encoder_parameter_groups(self):
        return []

    def forward(self, batch):
        return self.layer(batch["x"])


def test_fit_learns_and_stops_early():
    torch.manual_seed(0)
    n = 120
    labels = torch.arange(n) % 3
    x = F.one_hot(labels, 4).float() * 3 + 0.3 * torch.randn(n, 4)
    features = {"x": x}
    config = TrainConfig(epochs=30, patience=2, batch_size=16, lr=0.05, warmup_ratio=0.0)
    result = fit(_Linear(), features, labels, np.arange(0, 90), np.arange(90, 120), config, torch.device("cpu"))
    assert result.history[result.best_epoch - 1]["val_accuracy"] == 1.0
    assert len(result.history) == result.best_epoch + 2  # stopped after `patience` epochs without improvement
    assert len(result.history) < 30
    assert set(result.best_state) == {"layer.weight", "layer.bias"}


def test_ema_weights_are_validated_and_kept():
    """With train.ema_decay the saved weights are the moving average, not the last step's weights."""
    torch.manual_seed(0)
    n = 60
    labels = torch.arange(n) % 3
    features = {"x": torch.nn.functional.one_hot(labels, 4).float() + 0.5 * torch.randn(n, 4)}

    class Linear(torch.nn.Module):
        n_classes = 3

        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(4, 3)

        def encoder_parameter_groups(self):
            return []

        def forward(self, batch):
            return self.net(batch["x"])

    config = TrainConfig(epochs=1, patience=5, batch_size=4, lr=0.05, ema_decay=0.9)
    model = Linear()
    result = fit(model, features, labels, np.arange(40), np.arange(40, 60), config, torch.device("cpu"))
    assert set(result.best_state) == {"net.weight", "net.bias"}  # plain keys: loads into the model as usual
    assert not torch.equal(result.best_state["net.weight"], model.net.weight.detach())  # the average, not the last
    model.load_state_dict(result.best_state)
    with pytest.raises(ValueError, match="ema_decay"):
        fit(Linear(), features, labels, np.arange(40), np.arange(40, 60),
            TrainConfig(epochs=1, ema_decay=1.5), torch.device("cpu"))


def test_supervised_contrastive_rewards_class_clusters():
    """The term is low when each class's representations point one way, high when classes are mixed, and 0 when
    no post has another of its class in the batch; its gradient pulls a post towards its class."""
    from mmsent.losses import supervised_contrastive

    targets = torch.tensor([0, 0, 1, 1])
    clustered = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    mixed = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0]])
    assert supervised_contrastive(clustered, targets, 0.1) < 0.01 < 1.0 < supervised_contrastive(mixed, targets, 0.1)
    assert float(supervised_contrastive(clustered, torch.tensor([0, 1, 2, 3]), 0.1)) == 0.0
    moved = mixed.clone().requires_grad_(True)
    supervised_contrastive(moved, targets, 0.1).backward()
    stepped = F.normalize(mixed - 0.1 * moved.grad, dim=-1)
    before, after = F.normalize(mixed, dim=-1), stepped
    assert float(after[0] @ after[1]) > float(before[0] @ before[1])  # post 0 moved towards post 1, its class
    assert float(after[0] @ after[2]) < float(before[0] @ before[2])  # and away from post 2, the other class


def test_supcon_term_trains_the_representation_and_is_validated():
    """With train.supcon_weight the loop trains on the model's fused representation too: the task is learned,
    and the classes' representations end more clustered (a lower contrastive term) than without it."""
    from mmsent.losses import supervised_contrastive

    torch.manual_seed(0)
    n = 120
    labels = torch.arange(n) % 3
    features = {"x": F.one_hot(labels, 4).float() + 0.3 * torch.randn(n, 4)}

    class TwoStage(nn.Module):
        n_classes = 3

        def __init__(self):
            super().__init__()
            torch.manual_seed(1)
            self.body, self.head = nn.Linear(4, 8), nn.Linear(8, 3)

        def encoder_parameter_groups(self):
            return []

        def represent(self, batch):
            return self.body(batch["x"])  # (B, 8)

        def forward(self, batch):
            return self.head(self.represent(batch))

    def contrastive_after(weight: float) -> float:
        model = TwoStage()
        config = TrainConfig(epochs=15, patience=15, batch_size=24, lr=0.02, warmup_ratio=0.0,
                             supcon_weight=weight)
        result = fit(model, features, labels, np.arange(90), np.arange(90, 120), config, torch.device("cpu"))
        assert max(r["val_accuracy"] for r in result.history) >= 0.9
        model.load_state_dict(result.best_state)
        with torch.no_grad():
            return float(supervised_contrastive(model.represent(features), labels, 0.1))

    assert contrastive_after(1.0) < contrastive_after(0.0) - 0.2
    with pytest.raises(ValueError, match="supcon"):
        fit(TwoStage(), features, labels, np.arange(90), np.arange(90, 120),
            TrainConfig(epochs=1, supcon_temperature=0.0, supcon_weight=0.5), torch.device("cpu"))
