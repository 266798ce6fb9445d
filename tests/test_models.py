"""Every encoder x fusion x modality: output shape, no NaN, every trainable parameter gets a gradient.

Encoders come from the registries (packaged weights) plus tiny Hugging Face models saved to a temp dir,
so the 'any Hugging Face id or local folder' path is exercised too.
"""

from __future__ import annotations

import pytest
import torch

from mmsent.config import LABELS, ImageEncoderConfig, RunConfig, TextEncoderConfig, TextPrepConfig
from mmsent.data.dataset import open_data
from mmsent.model import MODALITIES, MultimodalClassifier, Towers, build_towers
from mmsent.registry import FUSIONS, IMAGE_ENCODERS, MODEL_FAMILIES, TEXT_ENCODERS

from helpers import TINY_IMAGE, TINY_TEXT, encoder_params


@pytest.fixture(scope="module")
def tower_cache():
    return {}


def _tower(kind, name, train_layers, tower_cache, tiny_bert_dir, tiny_vit_dir):
    from mmsent.encoders.image import create_image_tower
    from mmsent.encoders.text import create_text_tower

    key = (kind, name, train_layers)
    if key not in tower_cache:
        if kind == "text":
            source = tiny_bert_dir if name == TINY_TEXT else name
            tower_cache[key] = create_text_tower(TextEncoderConfig(name=source, max_length=16, train_layers=train_layers))
        else:
            source = tiny_vit_dir if name == TINY_IMAGE else name
            layers = -1 if name == TINY_IMAGE and train_layers else train_layers
            tower_cache[key] = create_image_tower(ImageEncoderConfig(name=source, image_size=64 if name != TINY_IMAGE else 32,
                                                                     train_layers=layers))
    return tower_cache[key]


def _batch(towers: Towers, split, n=6):
    features = {}
    for tower in towers.present():
        features.update(tower.precompute(split, TextPrepConfig(), batch_size=4, workers=0))
    batch = {k: v[:n] for k, v in features.items()}
    if "image_present" in batch:
        batch["image_present"] = batch["image_present"].clone()
        batch["image_present"][0] = False  # one post without a usable image
    return batch


@pytest.mark.slow
@pytest.mark.parametrize("fusion", FUSIONS.names())
@pytest.mark.parametrize("text_name", encoder_params(TEXT_ENCODERS, TINY_TEXT))
@pytest.mark.parametrize("image_name", encoder_params(IMAGE_ENCODERS, TINY_IMAGE))
def test_every_encoder_and_fusion(fusion, text_name, image_name, dataset, tower_cache, tiny_bert_dir, tiny_vit_dir):
    towers = Towers(text=_tower("text", text_name, 1, tower_cache, tiny_bert_dir, tiny_vit_dir),
                    image=_tower("image", image_name, 1, tower_cache, tiny_bert_dir, tiny_vit_dir))
    config = RunConfig()
    config.fusion.name, config.fusion.dim, config.fusion.ffn_dim, config.fusion.layers = fusion, 16, 32, 2
    torch.manual_seed(0)
    model = MultimodalClassifier(config, towers)
    split = open_data(dataset)
    batch = _batch(towers, split)
    logits = model(batch)
    assert logits.shape == (6, len(LABELS))
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert any(n.startswith(("text_encoder.", "image_encoder.")) for n, _ in trainable), "no encoder layer trains"
    missing = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert not missing, f"parameters without a gradient: {missing}"


@pytest.mark.parametrize("modality", ["image", "text"])
def test_single_modality(modality, dataset, tower_cache, tiny_bert_dir, tiny_vit_dir):
    towers = Towers(
        text=_tower("text", TINY_TEXT, 0, tower_cache, tiny_bert_dir, tiny_vit_dir) if modality == "text" else None,
        image=_tower("image", TINY_IMAGE, 0, tower_cache, tiny_bert_dir, tiny_vit_dir) if modality == "image" else None)
    config = RunConfig(modality=modality)
    model = MultimodalClassifier(config, towers)
    batch = _batch(towers, open_data(dataset))
    assert set(batch) == set(towers.present()[0].feature_names)
    logits = model(batch)
    assert logits.shape == (6, 3) and torch.isfinite(logits).all()
    assert model.fusion is None


def test_missing_image_uses_learned_token(dataset, tower_cache, tiny_bert_dir, tiny_vit_dir):
    towers = Towers(text=_tower("text", TINY_TEXT, 0, tower_cache, tiny_bert_dir, tiny_vit_dir),
                    image=_tower("image", TINY_IMAGE, 0, tower_cache, tiny_bert_dir, tiny_vit_dir))
    model = MultimodalClassifier(RunConfig(), towers).eval()
    batch = _batch(towers, open_data(dataset))
    scrambled = dict(batch, image_input=batch["image_input"].clone())
    scrambled["image_input"][0] = torch.randn_like(scrambled["image_input"][0].float()).to(scrambled["image_input"].dtype)
    with torch.no_grad():
        a, b = model(batch), model(scrambled)
    # post 0 has no usable image: whatever its pixels/features hold must not matter
    assert torch.allclose(a[0], b[0], atol=1e-6)
    assert torch.allclose(a[1:], b[1:], atol=1e-6)


@pytest.fixture(scope="module")
def family_towers():
    return {}


@pytest.mark.slow
@pytest.mark.parametrize("fusion", FUSIONS.names())
@pytest.mark.parametrize("modality", MODALITIES)
@pytest.mark.parametrize("family", MODEL_FAMILIES.names())
def test_every_family_fusion_and_modality(family, modality, fusion, dataset, family_towers):
    """Each model family as `--model` builds it (small settings): shapes, no NaN, gradients everywhere."""
    config = RunConfig(model=family, modality=modality)
    config.fusion.name, config.fusion.dim, config.fusion.ffn_dim = fusion, 16, 32
    config.text.max_length = config.custom.max_length = 16
    config.image.image_size = config.custom.image_size = 32
    config.custom.dim, config.custom.ffn_dim, config.custom.layers, config.custom.widths = 32, 64, 1, [8, 16, 16, 16]
    key = (family, modality)
    if key not in family_towers:
        family_towers[key] = build_towers(config)
    towers = family_towers[key]
    torch.manual_seed(0)
    model = MultimodalClassifier(config, towers).train()
    batch = _batch(towers, open_data(dataset))
    logits = model(batch)
    assert logits.shape == (6, len(LABELS)) and torch.isfinite(logits).all()
    logits.sum().backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert not missing, f"parameters without a gradient: {missing}"


def test_layer_lr_decay_gives_each_encoder_layer_its_rate(tiny_bert_dir):
    """train.layer_lr_decay: the top trained layer of each encoder learns at encoder_lr, each one below at a
    further factor; the fusion and head keep train.lr; every trainable parameter is in exactly one group."""
    from mmsent.training import _parameter_groups

    config = RunConfig()
    config.text.name, config.text.train_layers, config.text.max_length = tiny_bert_dir, 2, 16
    config.image.train_layers, config.image.image_size = 3, 32  # the top 3 of Lite0's 18 stages
    config.fusion.dim, config.fusion.ffn_dim = 16, 32
    config.train.lr, config.train.encoder_lr, config.train.layer_lr_decay = 1e-3, 1e-4, 0.5
    model = MultimodalClassifier(config, build_towers(config))
    groups = _parameter_groups(model, config.train)
    rates = sorted(g["lr"] for g in groups)
    assert rates == pytest.approx([2.5e-5, 5e-5, 1e-4, 1e-3])  # depths 2 (image only), 1, 0; the head
    by_id = {id(p): g["lr"] for g in groups for p in g["params"]}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(by_id) == len(trainable) == sum(len(g["params"]) for g in groups)
    text_layers = model.text_encoder.encoder.layer  # the 2 trained BERT layers, bottom first
    assert by_id[id(next(text_layers[1].parameters()))] == pytest.approx(1e-4)
    assert by_id[id(next(text_layers[0].parameters()))] == pytest.approx(5e-5)
    assert by_id[id(next(model.image_encoder.stages[0].parameters()))] == pytest.approx(2.5e-5)
    assert by_id[id(next(model.head.parameters()))] == pytest.approx(1e-3)
    config.train.layer_lr_decay = 1.0  # off: one encoder group at encoder_lr, as before the option existed
    assert sorted(g["lr"] for g in _parameter_groups(model, config.train)) == pytest.approx([1e-4, 1e-3])
    config.train.layer_lr_decay = 0.0
    with pytest.raises(ValueError, match="layer_lr_decay"):
        _parameter_groups(model, config.train)
