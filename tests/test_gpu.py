"""The CUDA path (``pytest -m gpu`` on a machine with a GPU; skipped elsewhere): bf16 autocast, pinned batches,
frozen parts on the GPU, encoders trained end to end, prediction, and torchrun with two processes on one GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mmsent.cli import main
from mmsent.config import LABELS, RunConfig
from mmsent.data.dataset import open_data
from mmsent.model import MultimodalClassifier, build_towers
from mmsent.registry import FUSIONS, MODEL_FAMILIES
from mmsent.inference import FeatureBatches
from mmsent.training import fit

pytestmark = pytest.mark.gpu

SMALL = ["--epochs", "2", "--folds", "2", "--batch-size", "8", "--dim", "16", "--ffn-dim", "32", "--workers", "0",
         "--set", "text.max_length=16", "--device", "cuda"]


def _small_config(family: str, fusion: str) -> RunConfig:
    config = RunConfig(model=family)
    config.fusion.name, config.fusion.dim, config.fusion.ffn_dim = fusion, 16, 32
    config.text.max_length = config.custom.max_length = 16
    config.image.image_size = config.custom.image_size = 32
    config.custom.dim, config.custom.ffn_dim, config.custom.layers, config.custom.widths = 32, 64, 1, [8, 16]
    config.custom.blocks = [1, 1]
    config.text.train_layers, config.image.train_layers = 6, 18  # everything trains (packaged MiniLM, Lite0)
    config.train.epochs, config.train.batch_size, config.train.device = 2, 8, "cuda"
    return config


@pytest.mark.parametrize("fusion", FUSIONS.names())
@pytest.mark.parametrize("family", MODEL_FAMILIES.names())
def test_every_family_and_fusion_trains_end_to_end_on_gpu(family, fusion, dataset):
    """Encoders unfrozen, bf16 autocast: finite losses, every parameter on the GPU and updated."""
    config = _small_config(family, fusion)
    towers = build_towers(config).to(torch.device("cuda"))
    split = open_data(dataset)
    features = {}
    for tower in towers.present():
        features.update(tower.precompute(split, config.text_prep, batch_size=4, workers=0))
    assert all(t.device.type == "cpu" for t in features.values())  # the cache stays on the CPU
    features["image_present"] = features["image_present"].clone()
    features["image_present"][0] = False  # one training post without a usable image: its learned token trains too
    labels = torch.tensor(split.labels)
    torch.manual_seed(0)
    model = MultimodalClassifier(config, towers)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    result = fit(model, features, labels, np.arange(16), np.arange(16, 24), config.train, torch.device("cuda"))
    assert all(p.device.type == "cuda" for p in model.parameters())
    assert all(np.isfinite(r["train_loss"]) and np.isfinite(r["val_loss"]) for r in result.history)
    assert np.allclose(result.val_probs.sum(1), 1.0, atol=1e-3)
    unchanged = [n for n, p in model.named_parameters() if p.requires_grad and torch.equal(p.detach().cpu(), before[n])]
    assert not unchanged, f"parameters the GPU training never updated: {unchanged}"
    assert any(n.startswith(("text_encoder.", "image_encoder.")) for n in before)


def test_batches_are_pinned_for_the_gpu(dataset):
    features = {"x": torch.randn(10, 4), "text_mask": torch.ones(10, 5, dtype=torch.bool)}
    pinned = FeatureBatches(features, torch.zeros(10, dtype=torch.long), np.arange(10), 4, pin_memory=True)
    assert all(t.is_pinned() for batch, _, _ in pinned for t in batch.values())


def test_cli_trains_and_predicts_on_gpu(dataset, tmp_path, tiny_bert_dir, tiny_vit_dir):
    run = tmp_path / "run"
    assert main(["train", "--data", str(dataset), "--out", str(run), *SMALL, "--text-encoder", tiny_bert_dir,
                 "--image-encoder", tiny_vit_dir, "--set", "image.image_size=32", "--text-train-layers", "2",
                 "--image-train-layers", "-1"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["device"].startswith("cuda")
    predictions = tmp_path / "pred.txt"
    assert main(["predict", "--run", str(run), "--data", str(dataset), "--out", str(predictions),
                 "--device", "cuda"]) == 0
    from mmsent import load_run

    gpu, cpu = load_run(run, device="cuda"), load_run(run, device="cpu")
    post = {"text": "love great happy", "image": dataset / "data" / "1000.jpg"}
    p_gpu, p_cpu = gpu.predict(**post), cpu.predict(**post)
    # bf16 autocast on the GPU, float32 on the CPU: the same weights give nearly the same probabilities
    assert np.allclose([p_gpu.probabilities[k] for k in LABELS], [p_cpu.probabilities[k] for k in LABELS], atol=0.05)


def test_torchrun_two_processes_share_one_gpu(dataset, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                          os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mmsent",
               "train", "--data", str(dataset), "--out", str(out), *SMALL, "--model", "custom",
               "--custom-dim", "32", "--custom-image-size", "32", "--set", "custom.widths=8,16",
               "--set", "custom.blocks=1,1"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2 and len(metrics["folds"]) == 2 and metrics["device"].startswith("cuda")
