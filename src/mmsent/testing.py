"""Contract checks for plugin authors: :func:`check_encoder` runs an encoder on a few tiny posts and fails with a
clear message where it breaks what the rest of mmsent relies on (the feature cache, the model, prediction).

    from mmsent.testing import check_encoder

    check_encoder("minilm")          # a registered encoder, built with small settings
    check_encoder(my_tower)          # an instance of mmsent.encoders.base.Tower

What is checked (the contract of :class:`mmsent.encoders.base.Tower`):

* ``kind`` and ``feature_names`` are set; ``expected_shapes(n)`` has one shape per feature, posts on the first axis;
* ``encode_items`` gives exactly ``feature_names``, in the shapes ``expected_shapes`` states (-1 = any size), masks
  as bool, floating features as float16 or float32 and finite; ``[]`` gives every feature with no rows; posts
  without their input ("" for a text, None for an image or a raw text) are encoded, an image marked absent;
* the same posts give the same features twice, and whatever the batch size;
* ``precompute`` over a data folder of the same posts gives what ``encode_items`` gives;
* ``cache_id()`` is a string, the same on every call, and different for an encoder built with other settings;
* text and image encoders: ``make_trainable()`` is a fresh copy each time, and maps the features to tokens
  (B, T, out_dim) float32 and a bool mask (B, T), the same twice in eval mode.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

TEXTS = ("what a great day at the beach", "", "sad news " * 60)  # a post, one without text, one over any max_length
RAW_TEXTS = ("what a great day 😀", None, "awful, just awful")  # raw texts (lexicon): None = no text
SMALL = {"text": {"max_length": 16}, "image": {"image_size": 64}}  # registered encoders are checked at these
OTHER = {"text": {"max_length": 12}, "image": {"image_size": 32}}  # ... and their cache_id compared at these
TOLERANCE = 1e-2  # features computed in other batches may differ by float16 rounding


class EncoderContractError(AssertionError):
    """An encoder breaks the contract of :class:`mmsent.encoders.base.Tower`."""


def check_encoder(encoder, other=None):
    """Check ``encoder`` (a :class:`~mmsent.encoders.base.Tower`, or the name of a registered text or image encoder,
    built with small settings) against the encoder contract; raise :class:`EncoderContractError` naming the first
    breach. ``other``: an encoder of the same class built with other settings, whose ``cache_id`` must differ (made
    from the registered config for a name). Returns the checked encoder."""
    from .encoders.base import Tower

    if isinstance(encoder, str):
        encoder, other = _build(encoder, SMALL), _build(encoder, OTHER)
    if not isinstance(encoder, Tower):
        raise EncoderContractError(f"{encoder!r} is not an encoder (mmsent.encoders.base.Tower)")
    name = type(encoder).__name__
    _require(isinstance(getattr(encoder, "kind", None), str), name, "has no 'kind' (text, image, ...)")
    names = getattr(encoder, "feature_names", ())
    _require(isinstance(names, tuple) and names and all(isinstance(n, str) for n in names), name,
             f"feature_names must be a non-empty tuple of names, got {names!r}")
    items = sample_items(encoder)
    features = _check_encoded(encoder, items, name)
    _check_repeatable(encoder, items, features, name)
    _check_precompute(encoder, items, features, name)
    _check_cache_id(encoder, other, name)
    if encoder.kind in ("text", "image"):
        _check_trainable(encoder, features, name)
    return encoder


def _require(condition: bool, name: str, message: str) -> None:
    if not condition:
        raise EncoderContractError(f"{name}: {message}")


def _build(name: str, settings: dict):
    """A registered encoder built from its registered config with ``settings`` (those of its kind's fields)."""
    from .registry import IMAGE_ENCODERS, TEXT_ENCODERS

    for kind, registry in (("text", TEXT_ENCODERS), ("image", IMAGE_ENCODERS)):
        if name in registry:
            config_class = registry.config_of(name)
            fields = {f.name for f in dataclasses.fields(config_class)}
            chosen = {key: value for key, value in settings[kind].items() if key in fields}
            config = config_class(**({"name": name} if "name" in fields else {}), **chosen)
            return registry.create(name, config)
    raise EncoderContractError(f"{name!r} is no registered text or image encoder")


def sample_items(encoder) -> list:
    """Three tiny posts of the kind ``encoder`` takes, the second without its input."""
    import numpy as np

    if encoder.kind == "image":
        rng = np.random.default_rng(0)
        size = encoder.size
        return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8), None,
                np.full((size, size, 3), 200, dtype=np.uint8)]
    if encoder.kind == "lexicon":
        return list(RAW_TEXTS)
    return list(TEXTS)  # text, and the text read in images


def _check_encoded(encoder, items: list, name: str) -> dict:
    """encode_items: names, shapes, dtypes and finiteness of the features of ``items`` and of no posts."""
    n = len(items)
    expected = encoder.expected_shapes(n)
    _require(set(expected) == set(encoder.feature_names), name,
             f"expected_shapes({n}) names {sorted(expected)}, feature_names {sorted(encoder.feature_names)}")
    for feature, shape in expected.items():
        _require(len(shape) >= 1 and shape[0] == n, name, f"expected_shapes({n})[{feature!r}] = {shape}: the "
                                                          f"posts must be on the first axis")
    features = encoder.encode_items(items)
    _check_features(features, expected, name, "encode_items")
    empty = encoder.encode_items([])
    _check_features(empty, encoder.expected_shapes(0), name, "encode_items([])")
    if encoder.kind == "image":
        present = features["image_present"].tolist()
        _require(present == [item is not None for item in items], name,
                 f"image_present is {present} for images {['array' if i is not None else None for i in items]}")
    return features


def _check_features(features: dict, expected: dict, name: str, where: str) -> None:
    import torch

    _require(isinstance(features, dict) and set(features) == set(expected), name,
             f"{where} gave {sorted(features) if isinstance(features, dict) else type(features).__name__}, "
             f"expected the features {sorted(expected)}")
    for feature, tensor in features.items():
        _require(isinstance(tensor, torch.Tensor), name, f"{where}: {feature} is a {type(tensor).__name__}, not a "
                                                         f"tensor")
        shape = expected[feature]
        fits = len(shape) == tensor.dim() and all(want in (-1, got) for want, got in zip(shape, tensor.shape))
        _require(fits, name, f"{where}: {feature} has shape {tuple(tensor.shape)}, expected_shapes says {shape}")
        if feature.endswith(("_mask", "_present")):
            _require(tensor.dtype == torch.bool, name, f"{where}: the mask {feature} is {tensor.dtype}, not bool")
        if tensor.is_floating_point():
            _require(tensor.dtype in (torch.float16, torch.float32), name,
                     f"{where}: {feature} is {tensor.dtype}; floating features are float16 or float32")
            _require(bool(torch.isfinite(tensor).all()), name, f"{where}: {feature} has values that are not finite")


def _same(a: dict, b: dict, exact: bool) -> list[str]:
    """The features that differ between two encodings of the same posts."""
    import torch

    differ = []
    for feature, x in a.items():
        y = b[feature]
        if x.shape != y.shape:
            differ.append(f"{feature} (shapes {tuple(x.shape)} and {tuple(y.shape)})")
        elif exact and not torch.equal(x, y):
            differ.append(feature)
        elif not exact and not torch.allclose(x.float(), y.float(), atol=TOLERANCE, rtol=TOLERANCE):
            differ.append(f"{feature} (by up to {float((x.float() - y.float()).abs().max()):.3g})")
    return differ


def _check_repeatable(encoder, items: list, features: dict, name: str) -> None:
    again = encoder.encode_items(items)
    differ = _same(features, again, exact=True)
    _require(not differ, name, f"encode_items gave other features for the same posts the second time: {differ}")
    for batch_size in (1, len(items)):
        differ = _same(features, encoder.encode_items(items, batch_size=batch_size), exact=False)
        _require(not differ, name, f"encode_items with batch_size={batch_size} gave other features: {differ}")


def _check_cache_id(encoder, other, name: str) -> None:
    first = encoder.cache_id()
    _require(isinstance(first, str) and first, name, f"cache_id() must be a non-empty string, got {first!r}")
    _require(encoder.cache_id() == first, name, "cache_id() changed between two calls")
    if other is not None:
        _require(other.cache_id() != first, name, f"cache_id() is {first!r} for other settings too: the cache "
                                                  "would mix their features")


def _check_trainable(encoder, features: dict, name: str) -> None:
    import torch

    one, two = encoder.make_trainable(), encoder.make_trainable()
    shared = {id(p) for p in one.parameters()} & {id(p) for p in two.parameters()}
    _require(one is not two and not shared, name, "make_trainable() must return a fresh copy each time")
    one.eval()
    with torch.no_grad():
        tokens, mask = one(features)
        again, _ = one(features)
    n = len(next(iter(features.values())))
    _require(tokens.dtype == torch.float32 and tokens.dim() == 3 and tokens.shape[0] == n
             and tokens.shape[2] == encoder.out_dim, name,
             f"the trainable part gave tokens {tuple(tokens.shape)} {tokens.dtype}, expected ({n}, T, "
             f"{encoder.out_dim}) float32")
    _require(isinstance(mask, torch.Tensor) and mask.dtype == torch.bool and tuple(mask.shape) == tokens.shape[:2],
             name, f"the trainable part's mask must be bool of shape {tuple(tokens.shape[:2])}, got "
                   f"{getattr(mask, 'dtype', None)} {tuple(getattr(mask, 'shape', ()))}")
    _require(torch.equal(tokens, again), name, "the trainable part gave other tokens for the same features in eval "
                                               "mode")


def _check_precompute(encoder, items: list, features: dict, name: str) -> None:
    """precompute over a data folder of the same posts gives what encode_items gives (text, image, lexicon)."""
    from .config import TextPrepConfig
    from .data.dataset import open_data

    if encoder.kind not in ("text", "image", "lexicon"):
        return  # the text in images is read by OCR from image files: not made here
    with tempfile.TemporaryDirectory(prefix="mmsent-check-") as folder:
        split = open_data(Path(folder), "test", test_file=_write_posts(Path(folder), encoder.kind, items))
        prep = TextPrepConfig(strip_urls=False, strip_mentions=False, strip_rt=False, lowercase=False)
        computed = encoder.precompute(split, prep, 2, 0)
        if encoder.kind == "text":  # the texts as the split cleans them
            features = encoder.encode_items(split.texts(prep))
        elif encoder.kind == "image":  # the images as decoded from their files
            features = encoder.encode_items([None if raw is None else encoder.load(raw)
                                             for raw in map(split.read_image_bytes, split.guids)])
    differ = _same(features, computed, exact=False)
    _require(not differ, name, f"precompute gave other features than encode_items for the same posts: {differ}")


def _write_posts(folder: Path, kind: str, items: list) -> Path:
    """A lab folder of ``items`` (texts, or images written as JPEG, None: no file) as posts to predict; returns
    their label file."""
    from PIL import Image

    (folder / "data").mkdir()
    for index, item in enumerate(items):
        if kind == "image":
            (folder / "data" / f"{index}.txt").write_text("a post")
            if item is not None:
                Image.fromarray(item).save(folder / "data" / f"{index}.jpg", quality=95)
        elif item is not None:
            (folder / "data" / f"{index}.txt").write_text(item, encoding="utf-8")
    label_file = folder / "test_without_label.txt"
    label_file.write_text("guid,tag\n" + "".join(f"{index},null\n" for index in range(len(items))))
    return label_file
