"""Frozen EfficientNet-Lite0 (batch norm folded, channels-last, 224 px) on this CPU: torch eager vs ONNX Runtime.

Prints images per second for each (10 s of batches each) and the largest difference between their outputs.
This is the measurement that led to mmsent's ONNX Runtime backend (``--backend``, src/mmsent/encoders/runtime.py);
``ORT_PATH`` may name a folder holding other onnxruntime/onnx versions (appended to ``sys.path``).
"""

from __future__ import annotations

import copy
import os
import sys
import tempfile
import time
from pathlib import Path


def images_per_second(run, batch: int, seconds: float = 10.0) -> float:
    for _ in range(3):  # warm-up
        run()
    start, done = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        run()
        done += batch
    return done / (time.perf_counter() - start)


def main() -> None:
    if os.environ.get("ORT_PATH"):
        sys.path.append(os.environ["ORT_PATH"])
    import numpy as np
    import onnxruntime
    import torch

    from mmsent.encoders.efficientnet_lite import load_pretrained
    from mmsent.encoders.image import lite_stages

    torch.set_num_threads(2)
    fused = copy.deepcopy(load_pretrained("efficientnet_lite0")).fuse_batchnorm_()
    frozen = torch.nn.Sequential(*lite_stages(fused)).eval().to(memory_format=torch.channels_last)
    pixels = torch.randn(8, 3, 224, 224).contiguous(memory_format=torch.channels_last)  # (B, 3, S, S)
    with torch.inference_mode():
        rate = images_per_second(lambda: frozen(pixels), 8)
        reference = frozen(pixels).float().numpy()  # (B, 1280, 7, 7)
    print(f"torch eager fused channels-last b8: {rate:.1f} img/s", flush=True)

    path = Path(tempfile.mkdtemp()) / "lite0.onnx"
    torch.onnx.export(frozen, (torch.randn(8, 3, 224, 224),), str(path), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, opset_version=17, dynamo=False)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 2
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for batch in (8, 32):
        inputs = {"x": np.random.randn(batch, 3, 224, 224).astype(np.float32)}
        rate = images_per_second(lambda: session.run(None, inputs), batch)
        print(f"onnxruntime {onnxruntime.__version__} b{batch}: {rate:.1f} img/s", flush=True)
    out = session.run(None, {"x": pixels.contiguous().numpy()})[0]
    print("max abs diff vs torch:", float(np.abs(out - reference).max()), "scale", float(np.abs(reference).max()))


if __name__ == "__main__":
    main()
