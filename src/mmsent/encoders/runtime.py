"""Running a tower's frozen part with ONNX Runtime instead of torch.

On this project's 2-core CPU, ONNX Runtime runs the frozen EfficientNet-Lite0 about 1.5 times as fast as torch
eager, and MiniLM as fast as a warmed-up torch but without torch's slow first batches (``benchmarks/README.md``),
with outputs equal to float32 rounding. A tower's frozen part is exported once to ``<cache>/onnx/`` (keyed by the
tower's class, graph format and ``cache_id``) and loaded from there afterwards; a run's feature cache does not
depend on the backend.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..config import BACKENDS

ONNX_PACKAGES = ("onnxruntime", "onnx")  # onnx: torch's exporter writes the graph with it


class BackendError(ValueError):
    """A backend that cannot run here; the message says why."""


def onnx_available() -> bool:
    """Whether ONNX Runtime and the ``onnx`` package (needed to export) are installed."""
    return all(importlib.util.find_spec(name) is not None for name in ONNX_PACKAGES)


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto`` -> ``onnx`` on the CPU when ONNX Runtime is installed, else ``torch``; checks an explicit choice."""
    if backend not in BACKENDS:
        raise BackendError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        return "onnx" if device.type == "cpu" and onnx_available() else "torch"
    if backend == "onnx" and device.type != "cpu":
        raise BackendError(f"the onnx backend runs the frozen encoders on the CPU; with --device {device} use "
                           "--backend torch (or auto)")
    if backend == "onnx" and not onnx_available():
        raise BackendError("the onnx backend needs the packages onnxruntime and onnx (pip install onnxruntime onnx)")
    return backend


@dataclass
class FrozenGraph:
    """A tower's frozen part as a module from tensors to one tensor, with example inputs to trace it."""

    module: nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    input_names: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]  # per input (and "output"): axis -> name of a variable size


class LastHiddenState(nn.Module):
    """A Hugging Face model as a function of tensors -> ``last_hidden_state`` (what the exporter traces)."""

    def __init__(self, model: nn.Module, *input_names: str):
        super().__init__()
        self.model, self.input_names = model, input_names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.input_names, inputs))).last_hidden_state  # (B, T, D)


class OnnxRunner:
    """An ONNX Runtime session over an exported frozen part: call it with torch tensors, get a torch tensor."""

    def __init__(self, path: Path, input_names: tuple[str, ...], threads: int):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle threads sleep instead of spinning: the image-decoding worker process needs that core (measured:
        # 67 against 56 images/s on the 2-core CPU).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names, self.path = input_names, path
        self.used = {item.name for item in self.session.get_inputs()}  # the exporter drops unused inputs

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        feeds = {name: tensor.detach().cpu().contiguous().numpy() for name, tensor in zip(self.input_names, inputs)
                 if name in self.used}
        return torch.from_numpy(self.session.run(None, feeds)[0])


def onnx_path(graph_id: str) -> Path:
    """Where the exported graph of the frozen part identified by ``graph_id`` lives."""
    from ..features import cache_dir

    digest = hashlib.sha256(f"onnx:{graph_id}:torch {torch.__version__}".encode()).hexdigest()[:40]
    return cache_dir() / "onnx" / f"{digest}.onnx"


def export_graph(graph: FrozenGraph, path: Path) -> None:
    """Export ``graph`` to ``path`` (atomically: a concurrent process sees the old file or the whole new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".onnx")
    os.close(handle)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about Python-side shape arithmetic
            torch.onnx.export(graph.module.eval(), graph.example_inputs, tmp, input_names=list(graph.input_names),
                              output_names=["output"], dynamic_axes=graph.dynamic_axes, opset_version=17,
                              dynamo=False)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def load_runner(graph_id: str, input_names: tuple[str, ...], make_graph, log=print) -> OnnxRunner:
    """The ONNX Runtime session of a frozen part, exporting ``make_graph()`` first if it is not cached yet.

    ``graph_id`` identifies the graph: its weights and preprocessing, and the version of the code that builds it."""
    path = onnx_path(graph_id)
    if not path.is_file():
        log(f"exporting the frozen encoder to ONNX ({path.name}, once)")
        export_graph(make_graph(), path)
    try:
        return OnnxRunner(path, input_names, threads=torch.get_num_threads())
    except Exception:  # a cut or corrupt file (e.g. a disk that filled up): export again
        export_graph(make_graph(), path)
        return OnnxRunner(path, input_names, threads=torch.get_num_threads())
