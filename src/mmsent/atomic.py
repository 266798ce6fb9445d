"""Atomic file writes: a killed process never leaves a half-written file that a later command would trust."""

from __future__ import annotations

import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path


def _create_temporary(folder: Path, name: str) -> Path:
    """An empty new file ``.NAME.<random>.tmp`` in ``folder``, with the permissions the process's umask gives."""
    while True:
        path = folder / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return path
        except FileExistsError:
            continue


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temporary(path.parent, path.name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2))


def save_tensors(path: Path, tensors: dict, metadata: dict | None = None) -> None:
    """Write tensors as safetensors (never pickle), atomically."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
