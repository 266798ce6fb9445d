"""``--profile NAME`` presets (from the PROFILES registry) and the pooled feature caches they use."""

from __future__ import annotations

import json

import pytest
import torch

from mmsent.cli import main
from mmsent.config import ImageEncoderConfig, RunConfig, TextEncoderConfig, TextPrepConfig, apply_overrides
from mmsent.data.dataset import open_data
from mmsent.encoders.image import create_image_tower
from mmsent.encoders.text import create_text_tower
from mmsent.profiles import profile_overrides
from mmsent.registry import PROFILES

pytestmark = pytest.mark.slow  # trains runs: left out of the quick subset (pytest -m "not slow")

FAST = ["--epochs", "1", "--folds", "2", "--batch-size", "8", "--dim", "16", "--ffn-dim", "32", "--workers", "0",
        "--set", "text.max_length=16"]


@pytest.mark.parametrize("name", PROFILES.names())
def test_every_profile_is_a_valid_config_and_trains(name, dataset, tmp_path):
    apply_overrides(RunConfig(), profile_overrides(name))  # every key exists and has the right type
    run = tmp_path / "run"  # the default encoders: profiles may name their layers
    assert main(["train", "--data", str(dataset), "--out", str(run), *FAST, "--profile", name,
                 "--set", "image.image_size=64"]) == 0
    saved = RunConfig.from_dict(json.loads((run / "config.json").read_text()))
    flat = {f"{section}.{key}": value for section, values in saved.to_dict().items() if isinstance(values, dict)
            for key, value in values.items()}
    expected = {**profile_overrides(name), "train.epochs": 1}  # FAST's --epochs wins over a profile's
    assert all(flat[key] == value for key, value in expected.items())  # recorded, resolved
    assert main(["predict", "--run", str(run), "--data", str(dataset), "--out", str(tmp_path / "p.txt")]) == 0


def test_flags_override_the_profile(dataset, tmp_path, tiny_bert_dir, tiny_vit_dir):
    run = tmp_path / "run"
    assert main(["train", "--data", str(dataset), "--out", str(run), *FAST, "--profile", "fast",
                 "--fusion", "cross_attention", "--text-encoder", tiny_bert_dir, "--image-encoder", tiny_vit_dir,
                 "--set", "image.image_size=32", "--set", "image.pooled=false"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["fusion"]["name"] == "cross_attention"
    assert config["text"]["pooled"] is True and config["image"]["pooled"] is False


def test_pooled_features_are_the_mean_of_the_tokens(dataset, tiny_bert_dir, tiny_vit_dir):
    split = open_data(dataset)
    texts = split.texts(TextPrepConfig())
    tokens = create_text_tower(TextEncoderConfig(name=tiny_bert_dir, max_length=16)).encode_items(texts)
    pooled = create_text_tower(TextEncoderConfig(name=tiny_bert_dir, max_length=16, pooled=True)).encode_items(texts)
    assert pooled["text_hidden"].shape == (len(texts), 1, 32) and pooled["text_mask"].all()
    weights = tokens["text_mask"].unsqueeze(-1).float()
    expected = (tokens["text_hidden"].float() * weights).sum(1) / weights.sum(1)
    assert torch.allclose(pooled["text_hidden"][:, 0].float(), expected, atol=2e-3)

    pixels = [create_image_tower(ImageEncoderConfig(name=tiny_vit_dir, image_size=32)).load(dataset / "data" / "1000.jpg")] * 2
    image_tokens = create_image_tower(ImageEncoderConfig(name=tiny_vit_dir, image_size=32)).encode_items(pixels)["image_input"]
    image_pooled = create_image_tower(ImageEncoderConfig(name=tiny_vit_dir, image_size=32, pooled=True)).encode_items(pixels)
    assert image_pooled["image_input"].shape == (2, 1, 32)
    assert torch.allclose(image_pooled["image_input"][:, 0].float(), image_tokens.float().mean(1), atol=2e-3)


@pytest.mark.parametrize("flag", [["--text-train-layers", "1", "--set", "text.pooled=true"],
                                  ["--image-train-layers", "-1", "--set", "image.pooled=true"]])
def test_pooling_a_trained_encoder_is_refused(flag, dataset, tmp_path, capsys, tiny_bert_dir, tiny_vit_dir):
    code = main(["train", "--data", str(dataset), "--out", str(tmp_path / "r"), *FAST, "--text-encoder",
                 tiny_bert_dir, "--image-encoder", tiny_vit_dir, *flag])
    assert code == 2
    assert "pooled" in capsys.readouterr().err
