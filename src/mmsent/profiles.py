"""Named presets (``--profile NAME``): config overrides applied over the defaults, under ``--config``, ``--set``
and flags, so that any of their keys can still be changed. The resolved values are what ``config.json`` records."""

from __future__ import annotations

from typing import Any

from .registry import PROFILES


@PROFILES.register("fast")
def fast_profile() -> dict[str, Any]:
    """Frozen encoders whose mean-pooled outputs are cached (one vector per text and per image), concatenated:
    training reads 2 vectors per post instead of 113 tokens."""
    return {"text.train_layers": 0, "image.train_layers": 0, "text.pooled": True, "image.pooled": True,
            "fusion.name": "concat"}


@PROFILES.register("finetune")
def finetune_profile() -> dict[str, Any]:
    """The default with all 6 MiniLM layers fine-tuned (encoder lr 3e-5) for 3 epochs: fused by cross-attention
    with the frozen EfficientNet-Lite0 tokens; more accurate than the default at several times its training time,
    and each fold's text encoder then runs in torch at prediction time (figures: benchmarks/README.md)."""
    return {"text.train_layers": 6, "train.encoder_lr": 3e-5, "train.epochs": 3}


@PROFILES.register("quality")
def quality_profile() -> dict[str, Any]:
    """Both default encoders trained end to end (all 6 MiniLM layers, all 18 EfficientNet-Lite0 stages) at encoder
    lr 3e-5 for 3 epochs: for a GPU (on a small CPU it runs for hours; there ``finetune`` gets as far, and
    ``mmsent ensemble`` of runs with different encoders further)."""
    return {"text.train_layers": 6, "image.train_layers": 18, "train.encoder_lr": 3e-5, "train.epochs": 3}


@PROFILES.register("accurate")
def accurate_profile() -> dict[str, Any]:
    """The most accurate on a CPU: the default plus the text read inside each image (OCR, cached by image content;
    reading each new image costs more than encoding it) as a second text, with MiniLM's top 2 layers fine-tuned
    (encoder lr 3e-5, 3 epochs), about twice the default's training time; they then run in torch at prediction
    time (figures and costs: benchmarks/README.md)."""
    return {"ocr.enabled": True, "lexicon.enabled": True, "text.train_layers": 2, "train.encoder_lr": 3e-5,
            "train.epochs": 3}


def profile_overrides(name: str) -> dict[str, Any]:
    """The dotted config overrides of the profile ``name``."""
    return PROFILES.create(name)
