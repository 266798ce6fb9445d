"""Training checkpoints as one safetensors file (never pickle): named groups of tensors plus a JSON ``info`` object.

Tensors are stored as ``GROUP/NAME``; everything else (epoch, counters, history, scheduler and numpy RNG state,
the optimizer's non-tensor structure) goes into the safetensors metadata as JSON. Writes are atomic.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .errors import UserError
from .atomic import save_tensors

INFO_KEY = "mmsent_checkpoint"


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be read; the message says why."""


def flatten_optimizer_state(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """``optimizer.state_dict()`` -> (tensors named ``PARAM.KEY``, JSON-safe structure)."""
    tensors, scalars = {}, {}
    for param_id, entry in state_dict["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{param_id}.{key}"] = value.detach().to("cpu", copy=True)
            else:
                scalars[f"{param_id}.{key}"] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in group.items()}
              for group in state_dict["param_groups"]]
    tuples = sorted({k for group in state_dict["param_groups"] for k, v in group.items() if isinstance(v, tuple)})
    return tensors, {"param_groups": groups, "tuples": tuples, "scalars": scalars}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], structure: dict) -> dict:
    """Inverse of :func:`flatten_optimizer_state`: a dict ``optimizer.load_state_dict`` accepts."""
    state: dict[int, dict] = {}
    for name, value in [*tensors.items(), *structure["scalars"].items()]:
        param_id, key = name.split(".", 1)
        state.setdefault(int(param_id), {})[key] = value
    groups = [{k: tuple(v) if k in structure["tuples"] else v for k, v in group.items()}
              for group in structure["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_checkpoint(path: Path, groups: dict[str, dict[str, torch.Tensor]], info: dict) -> None:
    """Write ``groups`` of tensors and the JSON-safe ``info`` to ``path`` atomically."""
    tensors = {f"{group}/{name}": tensor for group, named in groups.items() for name, tensor in named.items()}
    save_tensors(path, tensors, metadata={INFO_KEY: json.dumps(info)})


def read_info(path: Path) -> dict:
    """The JSON ``info`` of a checkpoint, without loading its tensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return json.loads((handle.metadata() or {})[INFO_KEY])
    except Exception as error:
        raise CheckpointError(f"{path} is not a readable mmsent checkpoint ({type(error).__name__}); delete it, "
                              "or pass --overwrite to start the run again") from None


def load_checkpoint(path: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """Read a checkpoint written by :func:`save_checkpoint` -> (groups of tensors, info)."""
    from safetensors.torch import load_file

    info = read_info(path)
    try:
        tensors = load_file(str(path))
    except Exception as error:
        raise CheckpointError(f"{path} is not a readable mmsent checkpoint ({type(error).__name__})") from None
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        group, key = name.split("/", 1)
        groups.setdefault(group, {})[key] = tensor
    return groups, info
