"""The from-scratch family's encoders, built from torch.nn layers: a ResNet for images, a Transformer for texts.

Both follow the interface of :mod:`mmsent.encoders.base`. Their frozen part is only the preprocessing, so the
feature cache holds what they read: WordPiece token ids for texts, decoded and resized pixels for images.
Everything above trains from random initialisation.
"""

from __future__ import annotations

import json
import math

import torch
from torch import nn
from torch.nn import functional as F

from ..config import CustomConfig
from ..errors import ConfigError
from ..layers import MultiHeadAttention
from .base import Tower, TrainableEncoder
from .image import ImageTower, feature_map_to_tokens, normalise
from .text import TokenIds, packaged_minilm_path, read_model_config

PIXEL_MEAN, PIXEL_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet statistics: a fine generic scale


# ---------------------------------------------------------------- images: ResNet


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with batch norm; the shortcut is a strided 1x1 projection when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x):  # (B, Cin, H, W) -> (B, Cout, H / stride, W / stride)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def random_crop_flip(pixels: torch.Tensor, pad: int) -> torch.Tensor:
    """Training augmentation on a batch (B, 3, S, S) uint8: reflect-pad by ``pad``, random S x S crop, random flip."""
    b, _, size, _ = pixels.shape
    padded = F.pad(pixels.float(), (pad, pad, pad, pad), mode="reflect")  # (B, 3, S + 2p, S + 2p)
    offsets = torch.randint(0, 2 * pad + 1, (b, 2))
    flips = torch.rand(b) < 0.5
    out = torch.empty(b, 3, size, size, dtype=torch.float32, device=pixels.device)
    for i in range(b):
        y, x = int(offsets[i, 0]), int(offsets[i, 1])
        crop = padded[i, :, y:y + size, x:x + size]
        out[i] = crop.flip(-1) if flips[i] else crop
    return out


class ResNet(TrainableEncoder):
    """A small ResNet on cached pixels: 3x3 stem, stages of residual blocks, 1x1 projection to ``dim``.

    The last feature map's cells are the image tokens: (B, h*w, dim) with h = w = image_size / 2^(stages).
    """

    pretrained = False

    def __init__(self, config: CustomConfig):
        super().__init__()
        widths, blocks = [int(w) for w in config.widths], [int(b) for b in config.blocks]
        if not widths or len(widths) != len(blocks) or min(widths) < 1 or min(blocks) < 1:
            raise ConfigError(f"custom.widths {widths} and custom.blocks {blocks} must be positive and of equal length")
        self.augment = config.augment
        self.crop_pad = max(1, config.image_size // 8)
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        stages, channels = [], widths[0]
        for index, (width, count) in enumerate(zip(widths, blocks)):
            stride = 1 if index == 0 else 2
            stage = [ResidualBlock(channels, width, stride)] + [ResidualBlock(width, width) for _ in range(count - 1)]
            stages.append(nn.Sequential(*stage))
            channels = width
        self.stages = nn.Sequential(*stages)
        self.project = nn.Conv2d(channels, config.dim, 1)
        self.out_dim = config.dim
        self.to(memory_format=torch.channels_last)  # the layout convolutions run fastest in on the CPU

    def forward(self, features):
        pixels = features["image_input"]  # (B, 3, S, S) uint8
        if self.training and self.augment:
            x = random_crop_flip(pixels, self.crop_pad)
        else:
            x = pixels.float()
        x = normalise(x, PIXEL_MEAN, PIXEL_STD).contiguous(memory_format=torch.channels_last)  # (B, 3, S, S)
        fmap = self.project(self.stages(self.stem(x)))  # (B, dim, h, w)
        tokens = feature_map_to_tokens(fmap)  # (B, h*w, dim)
        return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)


class PixelTower(ImageTower):
    """Decodes images once at ``custom.image_size``; the cache holds the pixels, the ResNet trains on them."""

    def __init__(self, config: CustomConfig):
        self.size = config.image_size
        super().__init__(ResNet(config))

    def cache_id(self):
        return json.dumps({"image": "pixels", "size": self.size, "format": 1})

    def expected_shapes(self, n):
        return {"image_input": (n, 3, self.size, self.size), "image_present": (n,)}

    def encode_pixels(self, pixels):
        return pixels.contiguous()  # (B, 3, S, S) uint8


# ---------------------------------------------------------------- texts: Transformer encoder


class EncoderLayer(nn.Module):
    """Self-attention and a position-wise feed-forward, each in a residual branch after a layer norm (pre-norm).

    Dropout sits where Vaswani et al. put it, on each branch's output (and on the embeddings), not inside the
    attention or the feed-forward: every dropout draws random numbers, which is slow on a CPU.
    """

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = MultiHeadAttention(dim, heads, init="linear")  # no dropout inside (see above)
        self.norm2 = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, mask):  # (B, T, D), (B, T)
        normed = self.norm1(x)
        x = x + self.dropout(self.attention(normed, normed, mask))  # self-attention; padded keys get no weight
        return x + self.dropout(self.feed_forward(self.norm2(x)))  # (B, T, D)


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """The fixed sine/cosine position encodings of Vaswani et al. (2017): (length, dim)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]  # (L, 1)
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))  # (D/2,)
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return table


class TransformerTextEncoder(TrainableEncoder):
    """Token embedding + sinusoidal positions, ``layers`` encoder layers, final layer norm -> (B, T, dim) tokens."""

    pretrained = False

    def __init__(self, config: CustomConfig, vocab_size: int, pad_id: int):
        super().__init__()
        if config.dim % config.heads:
            raise ConfigError(f"custom.dim {config.dim} must be divisible by custom.heads {config.heads}")
        self.embedding = nn.Embedding(vocab_size, config.dim, padding_idx=pad_id)  # N(0, 1) entries
        self.register_buffer("positions", sinusoidal_positions(config.max_length, config.dim), persistent=False)
        # Vaswani et al.: embeddings x sqrt(d_model). With N(0, 1) entries they dominate the positions and move
        # slowly (nearly fixed random word codes); in cross-validation this did better than small-init (std
        # dim^-1/2) or factorised (64-d) embeddings that learn faster.
        self.scale = math.sqrt(config.dim)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(EncoderLayer(config.dim, config.heads, config.ffn_dim, config.dropout)
                                    for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.dim)
        self.out_dim = config.dim

    def forward(self, features):
        ids, mask = features["text_ids"].long(), features["text_mask"]  # (B, T), (B, T)
        x = self.embedding(ids) * self.scale + self.positions[: ids.shape[1]]  # (B, T, D)
        x = self.dropout(x)
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x), mask  # (B, T, D), (B, T)


class WordPieceTower(Tower):
    """Splits texts with the packaged MiniLM WordPiece vocabulary; the cache holds token ids and masks."""

    kind = "text"
    feature_names = ("text_ids", "text_mask")

    def __init__(self, config: CustomConfig):
        source = packaged_minilm_path()
        self.tokenizer = TokenIds(source, config.max_length, read_model_config(source).get("pad_token_id"))
        self.max_length = config.max_length
        super().__init__(TransformerTextEncoder(config, self.tokenizer.vocab_size, self.tokenizer.pad_id))

    def cache_id(self):
        return json.dumps({"text": "minilm-wordpiece", "vocab": self.tokenizer.vocab_size,
                           "max_length": self.max_length, "format": 1})

    def piece_offsets(self, text):
        return self.tokenizer.offsets(text)

    def expected_shapes(self, n):
        return {"text_ids": (n, self.max_length), "text_mask": (n, self.max_length)}

    def precompute(self, split, text_prep, batch_size, workers):
        return self.encode_items(split.texts(text_prep))

    def encode_items(self, items, batch_size=None):
        """Cleaned texts -> text_ids (N, L) int64 and text_mask (N, L) bool, padded to L = max_length."""
        ids, mask = self.tokenizer.pad(self.tokenizer(list(items)), width=self.max_length)  # (N, L) each
        return {"text_ids": ids, "text_mask": mask.bool()}
