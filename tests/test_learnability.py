"""Each model family learns a task it can: through ``mmsent train`` on a generated data folder whose label only a
planted word decides, the cross-validated accuracy is far above chance (1/3)."""

from __future__ import annotations

import pytest

from helpers import assert_figures_match_oof, write_planted_word_dataset
from mmsent.cli import main

pytestmark = pytest.mark.slow  # trains runs: left out of the quick subset (pytest -m "not slow")

COMMON = ["--folds", "2", "--batch-size", "8", "--workers", "0", "--seed", "0", "--patience", "20"]


def _cv_accuracy(tmp_path, *extra: str) -> float:
    data = write_planted_word_dataset(tmp_path / "planted", per_class=30)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), *COMMON, *extra]) == 0
    return assert_figures_match_oof(run)["cv"]["accuracy_mean"]


def test_pretrained_family_learns_a_planted_word(tmp_path):
    """The default encoders (MiniLM, EfficientNet-Lite0), frozen and mean-pooled (``--profile fast``)."""
    assert _cv_accuracy(tmp_path, "--profile", "fast", "--epochs", "20", "--lr", "3e-3", "--inner-val", "0.3") >= 0.9


def test_scratch_family_learns_a_planted_word(tmp_path):
    """``--model custom``: a Transformer over WordPiece tokens and a ResNet, both from scratch, small."""
    accuracy = _cv_accuracy(tmp_path, "--model", "custom", "--epochs", "20", "--lr", "3e-3", "--dim", "32",
                            "--ffn-dim", "64", "--custom-dim", "32", "--custom-heads", "4", "--custom-ffn-dim", "64",
                            "--custom-layers", "1", "--custom-image-size", "32", "--set", "custom.widths=8,16",
                            "--set", "custom.blocks=1,1")
    assert accuracy >= 0.8  # learnt from 45 posts a fold, from scratch: well above chance, below the pretrained
