"""On-disk cache of frozen-encoder outputs, keyed by the split's content, the encoder and its preprocessing."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch

from .config import TextPrepConfig
from .encoders.base import Tower
from .atomic import save_tensors
from .paths import cache_dir

TEXT_KINDS = ("text", "image_text")  # towers whose features depend on the text cleaning (text_prep)


def cache_key(tower: Tower, split_fingerprint: str, text_prep: TextPrepConfig) -> str:
    parts = {"encoder": tower.cache_id(), "data": split_fingerprint}
    if tower.inference_precision != "f32":  # reduced-precision features never mix with f32 ones (f32 keys unchanged)
        parts["precision"] = tower.inference_precision
    if tower.kind in TEXT_KINDS:
        parts["text_prep"] = vars(text_prep)
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _load_valid(path: Path, key: str, tower: Tower, n: int) -> dict[str, torch.Tensor] | None:
    """Load a cache entry, or None if it is missing, corrupt, or does not match what is expected."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            if (handle.metadata() or {}).get("key") != key:
                return None
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except FileNotFoundError:
        return None
    except Exception:  # corrupt or truncated entry: recompute
        return None
    expected = tower.expected_shapes(n)
    if set(tensors) != set(expected):
        return None
    for name, shape in expected.items():
        actual = tuple(tensors[name].shape)
        if len(actual) != len(shape) or any(e not in (-1, a) for e, a in zip(shape, actual)):
            return None
        if tensors[name].dtype not in (torch.float16, torch.float32, torch.bool, torch.uint8, torch.int64):
            return None
    return tensors


def load_or_compute(tower: Tower, split, text_prep: TextPrepConfig, batch_size: int = 32, workers: int = 1,
                    log=print, fingerprint: str | None = None) -> dict[str, torch.Tensor]:
    """Return the frozen features of every post in ``split``, computing and caching them if needed.

    ``fingerprint``: ``split.fingerprint()`` if the caller has it already (it reads every file).
    """
    fingerprint = fingerprint or split.fingerprint()
    key = cache_key(tower, fingerprint, text_prep)
    path = cache_dir() / f"{tower.kind}-{key[:40]}.safetensors"
    n = len(split.records)
    cached = _load_valid(path, key, tower, n)
    if cached is not None:
        log(f"{tower.kind} features: cache hit ({path.name})")
        if tower.kind == "text":
            split.texts(text_prep)  # still report the texts' encodings and problems
        elif "image_present" in cached:
            _report_missing_images(split, cached["image_present"])
        return cached
    if path.exists():
        log(f"{tower.kind} features: cache entry {path.name} is stale or corrupt; recomputing")
    start = time.perf_counter()
    tensors = tower.precompute(split, text_prep, batch_size, workers)
    seconds = time.perf_counter() - start
    log(f"{tower.kind} features: {n} posts in {seconds:.1f} s ({n / max(seconds, 1e-9):.1f}/s)")
    try:
        save_tensors(path, tensors, metadata={"key": key})
    except OSError as error:
        log(f"warning: could not write the feature cache {path}: {error}")
    return tensors


def _report_missing_images(split, present: torch.Tensor) -> None:
    for index in torch.nonzero(~present).flatten().tolist():
        split.warn(split.records[index].image_where, "unreadable or missing image (cached); using text only",
                   "image_unusable")


def compute_features(towers, split, text_prep: TextPrepConfig, workers: int = 1, log=print,
                     fingerprint: str | None = None, cache: bool = True) -> dict[str, torch.Tensor]:
    """Frozen features of every tower in ``towers``, merged into one dict of tensors indexed by post; through the
    on-disk cache, or with ``cache=False`` computed in memory only (the same tensors, neither read nor written)."""
    if not cache:
        features = {}
        for tower in towers:
            features.update(tower.precompute(split, text_prep, tower.precompute_batch_size, workers))
        return features
    fingerprint = fingerprint or split.fingerprint()
    features = {}
    for tower in towers:
        features.update(load_or_compute(tower, split, text_prep, batch_size=tower.precompute_batch_size,
                                        workers=workers, log=log, fingerprint=fingerprint))
    return features
