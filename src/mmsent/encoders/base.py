"""The one interface every encoder follows: the abstract base class :class:`Tower`.

Every encoder sets ``kind`` and ``feature_names`` and implements ``cache_id``, ``expected_shapes``, ``precompute`` and
``encode_items`` (abstract: a subclass missing one cannot be instantiated); :func:`mmsent.testing.check_encoder`
checks that an encoder keeps the contract these methods' docstrings state.

An encoder is split in two at ``train_layers`` from the top:

* a :class:`Tower` holds the frozen lower part. ``precompute`` runs it once over a data split (in inference mode)
  and returns tensors that the feature cache stores on disk, keyed by ``cache_id`` and the split's content;
  ``encode_items`` runs the same code on in-memory posts (cleaned texts, or decoded pixel arrays) without the cache;
* ``Tower.make_trainable()`` returns a fresh :class:`TrainableEncoder` (an ``nn.Module``) holding the upper part,
  initialised from the pretrained weights. Its ``forward(features)`` maps a batch of cached features to
  ``(tokens (B, T, D), mask (B, T) bool, True = real token)``; ``out_dim`` is D.

With ``train_layers = 0`` the whole encoder is frozen and its outputs are cached; with all layers trainable the
cache holds only the preprocessed inputs (pixels or token ids) and the encoder trains end to end.

The frozen part runs with torch, or with a graph runtime after ``use_backend("openvino")`` or ``use_backend("onnx")``:
a tower that can be exported names its inputs in ``frozen_inputs``, describes itself in ``frozen_graph()``, and is
given the function that loads a graph runtime's runner (:func:`.runtime.load_runner`) by the module that builds it. This
module imports none of the encoders nor the runtimes.
"""

from __future__ import annotations

import abc
import copy
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import GRAPH_RUNTIMES


@dataclass
class FrozenGraph:
    """A tower's frozen part as a module from tensors to one tensor, with example inputs to trace it."""

    module: nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    input_names: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]  # per input (and "output"): axis -> name of a variable size


# (graph_id, input_names, make_graph, runtime, log, precision) -> a callable runner of the exported frozen part
# with a ``precision`` attribute: :func:`mmsent.encoders.runtime.load_runner`.
RunnerLoader = Callable[..., Callable[..., torch.Tensor]]


class TrainableEncoder(nn.Module, abc.ABC):
    """The trainable upper part of an encoder."""

    out_dim: int
    pretrained: bool = True  # False: trained from random initialisation (at the head's learning rate)

    @abc.abstractmethod
    def forward(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of cached features -> tokens (B, T, out_dim) float32 and mask (B, T) bool (True = real token)."""

    def layers_top_first(self) -> list[list[nn.Parameter]]:
        """The parameters layer by layer, the top layer first (for layer-wise learning rates); by default one
        layer holding them all."""
        return [list(self.parameters())]

    def freeze(self) -> "TrainableEncoder":
        """Stop training this part too (its parameters get no gradient)."""
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        return self


class Tower(abc.ABC):
    """A loaded encoder: its frozen lower part and a template of its trainable upper part."""

    kind: str  # "text" or "image" (what the model's text or image path reads); "image_text", "lexicon": extra inputs
    feature_names: tuple[str, ...]  # the keys of what precompute and encode_items give (and the cache stores)
    precompute_batch_size: int = 32
    lower: nn.Module | None = None  # the frozen part (None when the cache holds only preprocessed inputs)
    frozen_inputs: tuple[str, ...] = ()  # input names of the exportable frozen part; () = none to export
    graph_format: int = 1  # bump when the code of frozen_graph() changes what is exported (stale exports are redone)
    _runner = None  # the graph runtime's runner of the frozen part, once use_backend(<a graph runtime>) was called
    inference_precision: str = "f32"  # what the frozen part computes in (set by use_backend; part of the cache key)

    def __init__(self, trainable_template: TrainableEncoder, load_runner: RunnerLoader | None = None):
        """``load_runner``: how to load a graph runtime's runner of the frozen part (None: torch only)."""
        self._template = trainable_template
        self._load_runner = load_runner

    def frozen_graph(self) -> FrozenGraph:
        """The frozen part as a module from tensors (named ``frozen_inputs``) to one tensor, for export."""
        raise NotImplementedError

    def use_backend(self, backend: str, log=print, precision: str = "f32") -> str:
        """Run the frozen part with ``"torch"`` or a graph runtime (exported once into the cache) at ``precision``:
        returns the backend used, which is torch (in f32) for a tower with nothing to export."""
        self._runner, self.inference_precision = None, "f32"
        if backend in GRAPH_RUNTIMES and self.frozen_inputs:
            if self._load_runner is None:
                raise TypeError(f"{type(self).__name__} has frozen_inputs but was given no load_runner")
            graph_id = f"{type(self).__name__} {self.graph_format} {self.cache_id()}"
            self._runner = self._load_runner(graph_id, self.frozen_inputs, self.frozen_graph, backend, log, precision)
            self.inference_precision = self._runner.precision
            return backend
        return "torch"

    def run_frozen(self, torch_forward, *inputs: torch.Tensor) -> torch.Tensor:
        """``torch_forward(*inputs)``, or the same graph on the graph runtime in use."""
        if self._runner is not None:
            return self._runner(*inputs)
        return torch_forward(*inputs)

    def to(self, device: torch.device) -> "Tower":
        """Run the frozen part on ``device`` (features still come back to the CPU, where the cache keeps them)."""
        if self.lower is not None:
            self.lower.to(device)
        return self

    @property
    def out_dim(self) -> int:
        return self._template.out_dim

    def make_trainable(self) -> TrainableEncoder:
        """A fresh copy of the upper part with its pretrained weights."""
        return copy.deepcopy(self._template)

    @abc.abstractmethod
    def cache_id(self) -> str:
        """Identifies weights, preprocessing and split point: anything that changes the cached tensors (the same
        string for the same settings, a different one when a setting changes them)."""

    @abc.abstractmethod
    def precompute(self, split, text_prep, batch_size: int, workers: int) -> dict[str, torch.Tensor]:
        """Run the frozen part over every post of ``split``; tensors have the posts on their first axis."""

    @abc.abstractmethod
    def encode_items(self, items: list, batch_size: int | None = None) -> dict[str, torch.Tensor]:
        """Run the frozen part over in-memory posts; the same tensors ``precompute`` gives for the same posts, whatever
        ``batch_size``, and for ``[]`` every feature with no rows. Masks are bool, floating features float16 or
        float32.

        Text towers take cleaned texts ("" for a post without text); image towers take decoded (S, S, 3) uint8
        arrays, None for a missing image.
        """

    def tokens_unavailable(self) -> str | None:
        """Why the tokens this encoder hands to the trainable part cannot be attributed to words or image regions
        (e.g. mean-pooled features: one vector per post), or None when they can (see :mod:`mmsent.explain`)."""
        return None

    def piece_offsets(self, text: str) -> list[tuple[int, int] | None] | None:
        """Text towers: the character span in the cleaned ``text`` of each token position the encoder gives for it
        (None for special tokens and padding), in the order of the token features; None if the tokenizer gives
        no offsets."""
        return None

    def token_grid(self, n_tokens: int) -> tuple[int, int, int] | None:
        """Image towers: (leading tokens that are no image cell, rows, columns) of ``n_tokens`` image tokens laid
        out row by row over the centre crop; None if they form no grid. By default a square grid, after one
        leading class token where ``n_tokens - 1`` is square (ViT)."""
        for skip in (0, 1):
            side = int(round((n_tokens - skip) ** 0.5))
            if side > 0 and side * side == n_tokens - skip:
                return skip, side, side
        return None

    @abc.abstractmethod
    def expected_shapes(self, n: int) -> dict[str, tuple]:
        """Shapes the cached tensors must have for ``n`` posts (-1 = any size); used to validate cache entries."""


def resolve_split(total_layers: int, train_layers: int, what: str) -> int:
    """Index of the first trainable layer, from the number of top layers to train."""
    if train_layers < 0 or train_layers > total_layers:
        raise ConfigError(f"{what}: train_layers must be between 0 and {total_layers}, got {train_layers}")
    return total_layers - train_layers


def check_poolable(pooled: bool, frozen: bool, what: str) -> None:
    """Pooled features are the frozen encoder's output averaged over tokens: nothing above them can train."""
    if pooled and not frozen:
        raise ConfigError(f"{what}.pooled caches mean-pooled outputs of a frozen encoder; it needs "
                         f"{what}.train_layers=0")


def module_device(module: nn.Module) -> torch.device:
    for parameter in module.parameters():
        return parameter.device
    return torch.device("cpu")
