"""Where an encoder's weights come from: identifying a Hugging Face model id or local model folder."""

from __future__ import annotations

import hashlib
from pathlib import Path


def fingerprint_source(source: str) -> str:
    """Identify a model by its files' sizes and config (cheap), or by its hub id."""
    path = Path(source)
    if not path.is_dir():
        return source
    digest = hashlib.sha256()
    for file in sorted(path.rglob("*")):
        if file.is_file():
            digest.update(f"{file.relative_to(path)}:{file.stat().st_size}".encode())
            if file.suffix == ".json":
                digest.update(file.read_bytes())
    return digest.hexdigest()[:16]
