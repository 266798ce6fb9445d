"""Folders mmsent keeps things in. A leaf module: it imports nothing from mmsent."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$MMSENT_CACHE_DIR``, else ``~/.cache/mmsent``: feature cache entries, exported graphs, unpacked models."""
    return Path(os.environ.get("MMSENT_CACHE_DIR") or Path.home() / ".cache" / "mmsent")


def onnx_dir() -> Path:
    """Where the frozen encoders exported to ONNX are kept (inside the cache folder)."""
    return cache_dir() / "onnx"


def models_dir() -> Path:
    """Where model folders unpacked from PyPI packages are kept (inside the cache folder)."""
    return cache_dir() / "models"
