"""The graph-runtime backends of the frozen encoders (OpenVINO, ONNX Runtime): the same features as torch, exported
once, chosen by name."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmsent.config import ImageEncoderConfig, RunConfig, TextEncoderConfig
from mmsent.data.dataset import open_data
from mmsent.encoders.image import create_image_tower
from mmsent.encoders.runtime import (BACKENDS, BackendError, backend_candidates, onnx_available, onnx_path,
                                     runtime_available)
from mmsent.encoders.text import create_text_tower
from mmsent.model import load_towers
from mmsent.registry import GRAPH_RUNTIMES

pytestmark = pytest.mark.skipif(not onnx_available(), reason="needs onnxruntime and onnx")
# Each graph runtime as a parameter; OpenVINO's tests carry the ``openvino`` marker (an optional package).
RUNTIMES = [pytest.param(name, marks=[pytest.mark.skipif(not runtime_available(name), reason=f"{name} not installed")]
                         + ([pytest.mark.openvino] if name == "openvino" else []))
            for name in GRAPH_RUNTIMES.names()]
needs_openvino = [pytest.mark.openvino,
                  pytest.mark.skipif(not runtime_available("openvino"), reason="openvino not installed")]

TEXTS = ["a happy day at the beach", "not good", "", "the the the the the the the the the the the the the"]


def _image_tower(request, train_layers=0):
    if request == "efficientnet_lite0":
        return create_image_tower(ImageEncoderConfig(image_size=64, train_layers=train_layers))
    return create_image_tower(ImageEncoderConfig(name=request, image_size=0))


def _text_tower(source, train_layers=0):
    return create_text_tower(TextEncoderConfig(name=source, max_length=16, train_layers=train_layers))


def _towers(tiny_bert_dir, tiny_mpnet_dir, tiny_vit_dir):
    return {
        "efficientnet_lite0": lambda: _image_tower("efficientnet_lite0"),
        "efficientnet_lite0 (top 3 stages trained)": lambda: _image_tower("efficientnet_lite0", train_layers=3),
        "tiny vit": lambda: _image_tower(tiny_vit_dir),
        "tiny bert": lambda: _text_tower(tiny_bert_dir),
        "tiny bert (top layer trained)": lambda: _text_tower(tiny_bert_dir, train_layers=1),
        "tiny bert (all layers trained)": lambda: _text_tower(tiny_bert_dir, train_layers=2),  # embeddings only
        "tiny mpnet": lambda: _text_tower(tiny_mpnet_dir),
    }


def _features(tower, dataset):
    split = open_data(dataset)
    if tower.kind == "text":
        return tower.encode_items(TEXTS, batch_size=3)
    return tower.precompute(split, None, 4, 0)


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite0 (top 3 stages trained)", "tiny vit",
                                  "tiny bert", "tiny bert (top layer trained)", "tiny bert (all layers trained)",
                                  "tiny mpnet"])
@pytest.mark.slow
def test_graph_runtimes_give_the_torch_features(runtime, name, dataset, tiny_bert_dir, tiny_mpnet_dir, tiny_vit_dir):
    tower = _towers(tiny_bert_dir, tiny_mpnet_dir, tiny_vit_dir)[name]()
    expected = _features(tower, dataset)
    assert tower.use_backend(runtime, log=lambda message: None) == runtime
    got = _features(tower, dataset)
    assert set(got) == set(expected)
    for key in expected:
        assert got[key].shape == expected[key].shape and got[key].dtype == expected[key].dtype, key
        if key.endswith(("mask", "present")):
            assert torch.equal(got[key], expected[key]), key
        else:  # float16 features: equal to rounding
            assert torch.allclose(got[key].float(), expected[key].float(), atol=2e-2, rtol=1e-2), key


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_export_happens_once_and_a_corrupt_export_is_redone(runtime, tiny_bert_dir):
    messages = []
    first = _text_tower(tiny_bert_dir)
    first.use_backend(runtime, log=messages.append)
    assert sum("exporting" in m for m in messages) == 1
    path = first._runner.path
    second = _text_tower(tiny_bert_dir)
    second.use_backend(runtime, log=messages.append)
    assert sum("exporting" in m for m in messages) == 1  # loaded from the cache
    assert second._model is None  # the torch model was never needed
    expected = first.encode_items(TEXTS)["text_hidden"]
    assert torch.equal(second.encode_items(TEXTS)["text_hidden"], expected)
    assert second._model is None

    path.write_bytes(b"not an onnx graph")
    third = _text_tower(tiny_bert_dir)
    third.use_backend(runtime, log=messages.append)
    assert torch.equal(third.encode_items(TEXTS)["text_hidden"], expected)


def test_the_export_key_follows_the_weights_and_the_graph_code(tiny_bert_dir, tiny_mpnet_dir):
    bert, mpnet = _text_tower(tiny_bert_dir), _text_tower(tiny_mpnet_dir)
    assert onnx_path(bert.cache_id()) != onnx_path(mpnet.cache_id())
    assert onnx_path("EfficientNetLiteTower 1 x") != onnx_path("EfficientNetLiteTower 2 x")


def test_torch_backend_uses_no_runner(tiny_bert_dir):
    tower = _text_tower(tiny_bert_dir)
    assert tower.use_backend("torch") == "torch" and tower._runner is None


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_runner_returns_arrays_it_does_not_reuse(runtime, tiny_bert_dir):
    tower = _text_tower(tiny_bert_dir)
    tower.use_backend(runtime, log=lambda message: None)
    first = tower.encode_items(TEXTS[:2])["text_hidden"]
    kept = first.clone()
    tower.encode_items(TEXTS[2:])
    assert torch.equal(first, kept)  # the second call did not write into the first call's result


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_runner_serves_concurrent_threads(runtime, tiny_bert_dir):
    from concurrent.futures import ThreadPoolExecutor

    tower = _text_tower(tiny_bert_dir)
    tower.use_backend(runtime, log=lambda message: None)
    inputs = [[text] * (1 + i % 3) for i in range(24) for text in TEXTS[i % 2: i % 2 + 1]]
    expected = [tower.encode_items(items)["text_hidden"] for items in inputs]
    with ThreadPoolExecutor(6) as pool:  # what `mmsent serve` does with simultaneous requests
        got = list(pool.map(lambda items: tower.encode_items(items)["text_hidden"], inputs))
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_every_runtime_computes_in_f32_unless_asked(runtime, tiny_bert_dir):
    tower = _text_tower(tiny_bert_dir)
    tower.use_backend(runtime, log=lambda message: None)
    assert tower._runner.precision == "f32" and tower.inference_precision == "f32"


@pytest.mark.parametrize("_", [pytest.param(None, marks=needs_openvino)])
def test_openvino_is_told_f32_and_compiles_f32(_, monkeypatch, tiny_bert_dir):
    """OpenVINO's CPU plugin lowers to bf16 by default where the CPU has bf16: the precision must be asked for
    explicitly (checked on the call, so this fails on any CPU) and be what the compiled model reports."""
    import openvino

    asked = []
    real_compile = openvino.Core.compile_model

    def spy(core, model, device, config=None):
        asked.append(dict(config or {}))
        return real_compile(core, model, device, config or {})

    monkeypatch.setattr(openvino.Core, "compile_model", spy)
    tower = _text_tower(tiny_bert_dir)
    tower.use_backend("openvino", log=lambda message: None)
    assert [config.get("INFERENCE_PRECISION_HINT") for config in asked] == ["f32"]
    assert tower._runner.compiled.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.f32


@pytest.mark.parametrize("_", [pytest.param(None, marks=needs_openvino)])
def test_bf16_is_opt_in_and_keyed_apart_in_the_feature_cache(_, tiny_bert_dir):
    import openvino

    from mmsent.features import cache_key
    from mmsent.config import TextPrepConfig

    f32_tower, plain_tower = _text_tower(tiny_bert_dir), _text_tower(tiny_bert_dir)
    f32_tower.use_backend("openvino", log=lambda message: None)
    f32_key = cache_key(f32_tower, "data", TextPrepConfig())
    assert f32_key == cache_key(plain_tower, "data", TextPrepConfig())  # f32 keys are those of torch (and older runs)
    bf16_tower = _text_tower(tiny_bert_dir)
    if "BF16" not in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        with pytest.raises(BackendError, match="no bf16 instructions"):
            bf16_tower.use_backend("openvino", log=lambda message: None, precision="bf16")
        return
    bf16_tower.use_backend("openvino", log=lambda message: None, precision="bf16")
    assert bf16_tower._runner.compiled.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.bf16
    assert bf16_tower.inference_precision == "bf16"
    assert cache_key(bf16_tower, "data", TextPrepConfig()) != f32_key


def test_reduced_precision_needs_a_runtime_that_offers_it():
    cpu = torch.device("cpu")
    for backend in ("auto", "torch", "onnx"):
        with pytest.raises(BackendError, match="--inference-precision bf16 runs only on --backend openvino"):
            backend_candidates(backend, cpu, "bf16")
    assert backend_candidates("openvino", cpu, "bf16") == ["openvino"] if runtime_available("openvino") else True
    with pytest.raises(BackendError, match="one of f32, bf16"):
        backend_candidates("auto", cpu, "fp8")


def test_backend_candidates():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    installed = [name for name in GRAPH_RUNTIMES.names() if runtime_available(name)]
    assert backend_candidates("auto", cpu) == installed + ["torch"]
    assert backend_candidates("auto", cpu)[0] == installed[0]  # onnx at least: the module is skipped without it
    assert backend_candidates("auto", cuda) == ["torch"]
    assert backend_candidates("torch", cpu) == ["torch"]
    for name in GRAPH_RUNTIMES.names():
        with pytest.raises(BackendError, match="CPU"):
            backend_candidates(name, cuda)
    with pytest.raises(BackendError, match="one of"):
        backend_candidates("tensorrt", cpu)
    assert set(BACKENDS) == {"auto", "torch", *GRAPH_RUNTIMES.names()}  # the config's choices and the registry


def test_a_missing_runtime_is_named_with_its_packages(monkeypatch):
    from mmsent.encoders import runtime

    monkeypatch.setattr(runtime, "runtime_available", lambda name: name != "openvino")
    with pytest.raises(BackendError, match="pip install onnx openvino"):
        backend_candidates("openvino", torch.device("cpu"))
    assert backend_candidates("auto", torch.device("cpu")) == ["onnx", "torch"]


def test_auto_falls_back_to_torch_when_the_export_fails(monkeypatch, tiny_bert_dir):
    from mmsent.encoders import text

    def broken(self):
        raise RuntimeError("cannot trace this model")

    monkeypatch.setattr(text.HFTextTower, "frozen_graph", broken)
    config = RunConfig(modality="text")
    config.text.name = tiny_bert_dir
    messages = []
    towers = load_towers(config, torch.device("cpu"), log=messages.append)
    assert towers.text._runner is None and any(m.endswith("trying torch") for m in messages)
    config.train.backend = "onnx"
    with pytest.raises(BackendError, match="--backend torch"):
        load_towers(config, torch.device("cpu"))


def test_pixels_reach_the_encoder_in_channels_last_memory(dataset):
    from mmsent.encoders.image import decode_split_images

    split = open_data(dataset)
    _, pixels, _ = next(decode_split_images(split, 32, 4, 0))
    assert pixels.shape == (4, 3, 32, 32) and pixels.dtype == torch.uint8
    assert pixels.is_contiguous(memory_format=torch.channels_last)
    assert np.asarray(pixels.permute(0, 2, 3, 1)).flags["C_CONTIGUOUS"]  # what ONNX Runtime reads, without a copy


@pytest.mark.slow
@pytest.mark.openvino  # loads OpenVINO when it is installed
def test_cli_backends_train_the_same_run_and_predict_the_same(dataset, tmp_path, monkeypatch):
    from helpers import train_run

    from mmsent.cli import main

    backends = ["torch"] + [name for name in GRAPH_RUNTIMES.names() if runtime_available(name)]
    runs = {}
    for backend in backends:
        monkeypatch.setenv("MMSENT_CACHE_DIR", str(tmp_path / f"cache-{backend}"))  # features computed each time
        runs[backend] = tmp_path / backend
        metrics = train_run(dataset, runs[backend], "--backend", backend)
        assert json.loads((runs[backend] / "config.json").read_text())["train"]["backend"] == backend
        runs[backend, "cv"] = metrics["cv"]["accuracy_mean"]
    assert len({runs[backend, "cv"] for backend in backends}) == 1
    outputs = []
    for backend in backends:
        out = tmp_path / f"pred-{backend}.txt"
        assert main(["predict", "--run", str(runs["torch"]), "--data", str(dataset), "--out", str(out),
                     "--backend", backend]) == 0
        outputs.append(out.read_text())
    assert all(output == outputs[0] for output in outputs)
    with pytest.raises(SystemExit):  # argparse refuses an unknown backend with a usage line
        main(["predict", "--run", str(runs["torch"]), "--data", str(dataset), "--out", str(tmp_path / "x"),
              "--backend", "tensorrt"])
