"""Shared fixtures: generated data folders and tiny randomly initialised Hugging Face models (no network)."""

from __future__ import annotations

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


@pytest.fixture
def dataset(tmp_path) -> Path:
    return write_dataset(tmp_path / "mvsa")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MMSENT_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> str:
    """A 2-layer, 32-d BERT with a tiny WordPiece vocabulary, saved like any Hugging Face model folder."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted({w for ws in WORDS.values() for w in ws}) + [
        "#", "tag", "rt", "quoted", "the", "a", "not"] + list("abcdefghijklmnopqrstuvwxyz")
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(folder)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_mpnet_dir(tmp_path_factory, tiny_bert_dir) -> str:
    """A 2-layer, 32-d MPNet (relative position bias between layers) with the tiny BERT's WordPiece tokenizer."""
    import torch
    from transformers import AutoTokenizer, MPNetConfig, MPNetModel

    folder = tmp_path_factory.mktemp("tiny_mpnet")
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    tokenizer.save_pretrained(folder)
    config = MPNetConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = MPNetModel(config)
    with torch.no_grad():  # a visible position bias, so that a split that drops it gives other outputs
        model.encoder.relative_attention_bias.weight.normal_(0.0, 2.0)
    model.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_vit_dir(tmp_path_factory) -> str:
    """A 1-layer, 32-d ViT on 32x32 images, saved like any Hugging Face model folder."""
    import torch
    from transformers import ViTConfig, ViTModel

    folder = tmp_path_factory.mktemp("tiny_vit")
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64)
    torch.manual_seed(0)
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    return str(folder)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` run only where CUDA is available (``pytest -m gpu`` on a GPU machine)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
