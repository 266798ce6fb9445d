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


def profile_overrides(name: str) -> dict[str, Any]:
    """The dotted config overrides of the profile ``name``."""
    return PROFILES.create(name)
