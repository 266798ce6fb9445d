"""Fusions of image and text token sequences, registered by name.

Every fusion: ``forward(img_tokens (B, Ti, D), img_mask (B, Ti), txt_tokens (B, Tt, D), txt_mask (B, Tt)) -> (B, out_dim)``,
masks True for real tokens. Both streams arrive already projected to the common dimension D.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import FusionConfig
from .layers import MultiHeadAttention, masked_mean
from .registry import FUSIONS


class CrossAttentionLayer(nn.Module):
    """Queries attend to a context sequence, then a feed-forward; residuals with post-layer-norm."""

    def __init__(self, config: FusionConfig):
        super().__init__()
        self.attention = MultiHeadAttention(config.dim, config.heads, dropout=config.dropout)
        self.norm1 = nn.LayerNorm(config.dim)
        self.feed_forward = nn.Sequential(
            nn.Linear(config.dim, config.ffn_dim), nn.GELU(), nn.Dropout(config.dropout), nn.Linear(config.ffn_dim, config.dim)
        )
        self.norm2 = nn.LayerNorm(config.dim)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, queries, context, context_mask):  # (B, Tq, D), (B, Tc, D), (B, Tc)
        attended = self.attention(queries, context, context_mask)  # (B, Tq, D)
        x = self.norm1(queries + self.dropout(attended))
        return self.norm2(x + self.dropout(self.feed_forward(x)))  # (B, Tq, D)


@FUSIONS.register("concat", config=FusionConfig)
class ConcatFusion(nn.Module):
    """Mean-pooled image and text features, concatenated."""

    def __init__(self, config: FusionConfig):
        super().__init__()
        self.out_dim = 2 * config.dim

    def forward(self, img_tokens, img_mask, txt_tokens, txt_mask):
        return torch.cat([masked_mean(img_tokens, img_mask), masked_mean(txt_tokens, txt_mask)], dim=-1)  # (B, 2D)


@FUSIONS.register("cross_attention", config=FusionConfig)
class CrossAttentionFusion(nn.Module):
    """Image tokens query the text tokens (multi-head); pooled result concatenated with pooled text."""

    def __init__(self, config: FusionConfig):
        super().__init__()
        self.layers = nn.ModuleList(CrossAttentionLayer(config) for _ in range(config.layers))
        self.out_dim = 2 * config.dim

    def forward(self, img_tokens, img_mask, txt_tokens, txt_mask):
        x = img_tokens
        for layer in self.layers:
            x = layer(x, txt_tokens, txt_mask)  # (B, Ti, D)
        return torch.cat([masked_mean(x, img_mask), masked_mean(txt_tokens, txt_mask)], dim=-1)  # (B, 2D)


@FUSIONS.register("bi_cross_attention", config=FusionConfig)
class BiCrossAttentionFusion(nn.Module):
    """ViLBERT-style co-attention: image->text and text->image cross-attention, stacked ``layers`` times."""

    def __init__(self, config: FusionConfig):
        super().__init__()
        self.image_to_text = nn.ModuleList(CrossAttentionLayer(config) for _ in range(config.layers))
        self.text_to_image = nn.ModuleList(CrossAttentionLayer(config) for _ in range(config.layers))
        self.out_dim = 2 * config.dim

    def forward(self, img_tokens, img_mask, txt_tokens, txt_mask):
        img, txt = img_tokens, txt_tokens
        for img_layer, txt_layer in zip(self.image_to_text, self.text_to_image):
            img, txt = img_layer(img, txt, txt_mask), txt_layer(txt, img, img_mask)  # both from the previous layer
        return torch.cat([masked_mean(img, img_mask), masked_mean(txt, txt_mask)], dim=-1)  # (B, 2D)


def create_fusion(config: FusionConfig) -> nn.Module:
    return FUSIONS.create(config.name, config)
