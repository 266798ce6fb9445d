"""Running a tower's frozen part with a graph runtime (ONNX Runtime or OpenVINO) instead of torch.

A tower's frozen part is exported once to ONNX, into ``<cache>/onnx/`` (keyed by the tower's class, graph format and
``cache_id``), and loaded from there by the runtime the backend names. Every runtime computes in float32 unless
``train.inference_precision`` asks for less (bf16, OpenVINO only): outputs then equal torch's to float32 rounding on
any CPU, so a run's feature cache does not depend on the backend, and reduced-precision features are cached apart.

Runtimes are registered in :data:`~mmsent.registry.GRAPH_RUNTIMES` in order of preference, with the precisions they
offer: ``--backend auto`` on the CPU tries them in that order, then torch. ONNX Runtime comes first; OpenVINO runs
only when asked for (``--backend openvino``): one full run of the test suite with it as the automatic choice ended in
a segmentation fault whose cause was not found.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import BACKENDS, PRECISIONS
from ..errors import ConfigError
from ..paths import onnx_dir
from ..registry import GRAPH_RUNTIMES
from .base import FrozenGraph

EXPORT_PACKAGES = ("onnx",)  # torch's exporter writes the graph with it


class BackendError(ConfigError):
    """A backend that cannot run here; the message says why."""


def runtime_available(name: str) -> bool:
    """Whether the packages of graph runtime ``name`` (and the exporter's) are installed."""
    packages = EXPORT_PACKAGES + GRAPH_RUNTIMES.metadata(name)["packages"]
    return all(importlib.util.find_spec(package) is not None for package in packages)


def onnx_available() -> bool:
    """Whether ONNX Runtime and the ``onnx`` package (needed to export) are installed."""
    return runtime_available("onnx")


def backend_candidates(backend: str, device: torch.device, precision: str = "f32") -> list[str]:
    """The backends to try, in order, for ``train.backend``: ``auto`` on the CPU -> every installed graph runtime
    in order of preference, then torch; ``auto`` on a GPU -> torch; an explicit choice -> itself, once checked.

    ``precision`` other than f32 needs an explicit graph runtime that offers it (nothing lowers it silently)."""
    if backend not in BACKENDS:
        raise BackendError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if precision not in PRECISIONS:
        raise BackendError(f"inference precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "f32":
        offered = [name for name in GRAPH_RUNTIMES.names() if precision in GRAPH_RUNTIMES.metadata(name)["precisions"]]
        if backend not in offered:
            raise BackendError(f"--inference-precision {precision} runs only on --backend {' or '.join(offered)} "
                               f"(got --backend {backend}); use --inference-precision f32")
    if backend == "auto":
        if device.type != "cpu":
            return ["torch"]
        return [name for name in GRAPH_RUNTIMES.names() if runtime_available(name)] + ["torch"]
    if backend != "torch":
        if device.type != "cpu":
            raise BackendError(f"the {backend} backend runs the frozen encoders on the CPU; with --device {device} "
                               "use --backend torch (or auto)")
        if not runtime_available(backend):
            packages = " ".join(EXPORT_PACKAGES + GRAPH_RUNTIMES.metadata(backend)["packages"])
            raise BackendError(f"the {backend} backend needs the packages {packages} (pip install {packages})")
    return [backend]


class LastHiddenState(nn.Module):
    """A Hugging Face model as a function of tensors -> ``last_hidden_state`` (what the exporter traces)."""

    def __init__(self, model: nn.Module, *input_names: str):
        super().__init__()
        self.model, self.input_names = model, input_names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.input_names, inputs))).last_hidden_state  # (B, T, D)


class GraphRunner:
    """A graph runtime running an exported frozen part: call it with torch tensors, get a torch tensor."""

    used: set[str]  # the inputs the graph kept (the exporter drops unused ones); set by each runtime

    def __init__(self, path: Path, input_names: tuple[str, ...]):
        self.path = path
        self.input_names = input_names  # the frozen part's inputs, in call order

    @property
    def precision(self) -> str:
        """The arithmetic the compiled graph runs in (one of ``config.PRECISIONS``), as the runtime reports it."""
        raise NotImplementedError

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        feeds = {name: tensor.detach().cpu().contiguous().numpy() for name, tensor in zip(self.input_names, inputs)
                 if name in self.used}
        return torch.from_numpy(self.run(feeds))


@GRAPH_RUNTIMES.register("onnx", packages=("onnxruntime",), precisions=("f32",))
class OnnxRunner(GraphRunner):
    """ONNX Runtime on the CPU (its CPU provider computes a float32 graph in float32)."""

    def __init__(self, path: Path, input_names: tuple[str, ...], threads: int, precision: str = "f32"):
        import onnxruntime

        if precision != "f32":
            raise BackendError(f"ONNX Runtime runs the frozen encoders in f32 only, not {precision}")

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle threads sleep instead of spinning: the image-decoding worker process needs that core.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        super().__init__(path, input_names)
        self.used = {item.name for item in self.session.get_inputs()}

    @property
    def precision(self) -> str:
        return "f32"

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, feeds)[0]


@GRAPH_RUNTIMES.register("openvino", packages=("openvino",), precisions=("f32", "bf16"))
class OpenVinoRunner(GraphRunner):
    """OpenVINO on the CPU.

    Its CPU plugin computes in bf16 by default on CPUs with bf16 instructions (AVX512-BF16, AMX), so the inference
    precision is always set: f32 unless bf16 is asked for, and bf16 only where the CPU has it. Threads are not pinned
    to cores: the image-decoding worker process shares them. Compiled models are cached beside the exports, one
    folder per precision. An infer request is not thread-safe (``mmsent serve`` predicts in a thread pool), so calls
    take turns on it."""

    def __init__(self, path: Path, input_names: tuple[str, ...], threads: int, precision: str = "f32"):
        import openvino

        core = openvino.Core()
        if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            raise BackendError("--inference-precision bf16: this CPU has no bf16 instructions (OpenVINO reports "
                               "none); use --inference-precision f32")
        core.set_property({"CACHE_DIR": str(path.parent / f"openvino-{precision}")})
        self.compiled = core.compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                               "ENABLE_CPU_PINNING": False,
                                                               "INFERENCE_PRECISION_HINT": precision})
        self.request = self.compiled.create_infer_request()
        self.lock = threading.Lock()
        self.output = self.compiled.output(0)
        super().__init__(path, input_names)
        self.used = {name for port in self.compiled.inputs for name in port.get_names()}

    @property
    def precision(self) -> str:
        return self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # "f32", "bf16", ...

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        with self.lock:
            result = self.request.infer(feeds)[self.output]
            return np.array(result, copy=True)  # the request reuses its output buffer on the next call


def onnx_path(graph_id: str) -> Path:
    """Where the exported graph of the frozen part identified by ``graph_id`` lives."""
    digest = hashlib.sha256(f"onnx:{graph_id}:torch {torch.__version__}".encode()).hexdigest()[:40]
    return onnx_dir() / f"{digest}.onnx"


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


def load_runner(graph_id: str, input_names: tuple[str, ...], make_graph, runtime: str = "onnx",
                log=print, precision: str = "f32") -> GraphRunner:
    """The ``runtime``'s runner of a frozen part at ``precision``, exporting ``make_graph()`` first if it is not
    cached yet.

    ``graph_id`` identifies the graph: its weights and preprocessing, and the version of the code that builds it."""
    make_runner = GRAPH_RUNTIMES.get(runtime)
    path = onnx_path(graph_id)
    if not path.is_file():
        log(f"exporting the frozen encoder to ONNX ({path.name}, once)")
        export_graph(make_graph(), path)
    try:
        return make_runner(path, input_names, threads=torch.get_num_threads(), precision=precision)
    except BackendError:
        raise
    except Exception:  # a cut or corrupt file (e.g. a disk that filled up): export again
        export_graph(make_graph(), path)
        return make_runner(path, input_names, threads=torch.get_num_threads(), precision=precision)
