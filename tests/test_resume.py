"""``mmsent train --resume``: a run killed mid-epoch (SIGKILL) continues to exactly the metrics of an uninterrupted one.

Also: checkpoints hold no pickle, a finished run is not overwritten without --overwrite, and --resume refuses flags
that would change what is trained.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from helpers import write_dataset
from mmsent.checkpoint import flatten_optimizer_state, read_info, unflatten_optimizer_state
from mmsent.cli import main
from mmsent.config import TrainConfig
from mmsent.training import fit

pytestmark = pytest.mark.slow  # trains runs: left out of the quick subset (pytest -m "not slow")

SMALL = ["--batch-size", "4", "--dim", "16", "--ffn-dim", "32", "--set", "text.max_length=16", "--workers", "0",
         "--seed", "5"]


def _tiny(bert: str, vit: str) -> list[str]:
    return ["--text-encoder", bert, "--image-encoder", vit, "--set", "image.image_size=32"]


# ----------------------------------------------------------------------------- end to end, killed by SIGKILL


def _spawn(data: Path, out: Path, log: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "1"}  # tiny models: one thread each, no contention with other processes
    cmd = [sys.executable, "-m", "mmsent", "train", "--data", str(data), "--out", str(out), *extra]
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def _kill_when(process: subprocess.Popen, path: Path, timeout: float = 300) -> None:
    """SIGKILL ``process`` as soon as ``path`` exists (a checkpoint: the next epoch has just begun)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the run ended (code {process.returncode}) before {path.name} appeared"
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL


def _history(run: Path, fold: int) -> list[dict]:
    rows = json.loads((run / "folds" / f"fold_{fold}" / "history.json").read_text())
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def test_killed_run_resumes_to_identical_metrics(tmp_path, tiny_bert_dir, tiny_vit_dir):
    data = write_dataset(tmp_path / "mvsa", n_train=48, n_test=6)
    args = [*_tiny(tiny_bert_dir, tiny_vit_dir), "--epochs", "4", "--patience", "10", "--folds", "2", *SMALL]
    whole, run = tmp_path / "whole", tmp_path / "run"
    log = tmp_path / "log.txt"
    assert _spawn(data, whole, log, *args).wait(timeout=600) == 0, log.read_text()[-3000:]

    # killed early in fold 0 (its first checkpoint has just appeared), resumed, killed again early in fold 1
    _kill_when(_spawn(data, run, log, *args), run / "folds" / "fold_0" / "checkpoint.safetensors")
    assert not (run / "metrics.json").exists()
    _kill_when(_spawn(data, run, log, *args, "--resume"), run / "folds" / "fold_1" / "checkpoint.safetensors")
    assert "fold 1/2: resuming after epoch" in log.read_text()
    assert (run / "folds" / "fold_0" / "result.json").is_file()
    assert not (run / "folds" / "fold_0" / "checkpoint.safetensors").exists()  # removed once the fold finished
    assert not (run / "metrics.json").exists()
    assert read_info(run / "folds" / "fold_1" / "checkpoint.safetensors")["epoch"] >= 1
    tensors = load_file(str(run / "folds" / "fold_1" / "checkpoint.safetensors"))  # plain safetensors, no pickle
    assert {name.split("/")[0] for name in tensors} == {"model", "best", "optim", "rng", "val"}
    assert tensors["rng/torch"].dtype == torch.uint8

    process = _spawn(data, run, log, "--resume")  # flags may be left out: the saved config.json is used
    assert process.wait(timeout=600) == 0, log.read_text()[-3000:]
    output = log.read_text()
    assert "fold 1/2: finished earlier; kept" in output and "fold 2/2: resuming after epoch" in output

    expected, resumed = (json.loads((r / "metrics.json").read_text()) for r in (whole, run))
    assert resumed["folds"] == expected["folds"]
    assert resumed["cv"] == expected["cv"] and resumed["out_of_fold"] == expected["out_of_fold"]
    assert (run / "oof_predictions.csv").read_text() == (whole / "oof_predictions.csv").read_text()
    for fold in range(2):
        assert _history(run, fold) == _history(whole, fold)
        a, b = (load_file(str(r / "folds" / f"fold_{fold}" / "model.safetensors")) for r in (whole, run))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert not (run / "folds" / f"fold_{fold}" / "checkpoint.safetensors").exists()


# ----------------------------------------------------------------------------- the run folder contract, in process


def _train(data: Path, out: Path, *extra: str) -> int:
    return main(["train", "--data", str(data), "--out", str(out), "--epochs", "1", "--folds", "2", *SMALL, *extra])


def test_finished_run_is_not_overwritten_without_flag(dataset, tmp_path, capsys, tiny_bert_dir, tiny_vit_dir):
    run = tmp_path / "run"
    tiny = _tiny(tiny_bert_dir, tiny_vit_dir)
    assert _train(dataset, run, *tiny, "--lr", "0.002") == 0
    first = json.loads((run / "metrics.json").read_text())
    capsys.readouterr()
    assert _train(dataset, run, *tiny, "--lr", "0.01") == 2
    err = capsys.readouterr().err
    assert "already holds a finished run" in err and "--resume" in err and "--overwrite" in err
    assert json.loads((run / "config.json").read_text())["train"]["lr"] == 0.002  # untouched
    assert _train(dataset, run, *tiny, "--lr", "0.01", "--overwrite") == 0
    assert json.loads((run / "config.json").read_text())["train"]["lr"] == 0.01
    assert _train(dataset, run, *tiny, "--lr", "0.002", "--overwrite") == 0
    assert json.loads((run / "metrics.json").read_text())["folds"] == first["folds"]


def test_unfinished_run_is_not_restarted_without_flag(dataset, tmp_path, capsys, tiny_bert_dir, tiny_vit_dir):
    run = tmp_path / "run"
    tiny = _tiny(tiny_bert_dir, tiny_vit_dir)
    assert _train(dataset, run, *tiny) == 0
    (run / "metrics.json").unlink()  # as if killed after fold 0
    capsys.readouterr()
    assert _train(dataset, run, *tiny) == 2
    assert "unfinished run" in capsys.readouterr().err
    assert main(["predict", "--run", str(run), "--data", str(dataset), "--out", str(tmp_path / "p.txt")]) == 2
    err = capsys.readouterr().err
    assert "is an unfinished run" in err and "--resume" in err  # no ensemble of the folds that happen to exist


def test_resume_uses_saved_config_and_refuses_changes(dataset, tmp_path, capsys, tiny_bert_dir, tiny_vit_dir):
    run = tmp_path / "run"
    assert _train(dataset, run, *_tiny(tiny_bert_dir, tiny_vit_dir)) == 0
    first = json.loads((run / "metrics.json").read_text())
    capsys.readouterr()

    assert main(["train", "--data", str(dataset), "--out", str(run), "--resume", "--epochs", "3", "--dim", "32"]) == 2
    err = capsys.readouterr().err
    assert "--resume continues" in err and "train.epochs: 1 -> 3" in err and "fusion.dim: 16 -> 32" in err
    assert main(["train", "--data", str(dataset), "--out", str(run), "--resume", "--overwrite"]) == 2
    assert "exclude each other" in capsys.readouterr().err

    # a finished run resumes to itself; identical flags and --workers/--device may be given
    same = ["--resume", "--epochs", "1", "--workers", "1", "--device", "cpu"]
    assert main(["train", "--data", str(dataset), "--out", str(run), *same]) == 0
    out = capsys.readouterr().out
    assert out.count("finished earlier; kept") == 2
    assert json.loads((run / "metrics.json").read_text())["folds"] == first["folds"]


def test_resume_needs_a_run(dataset, tmp_path, capsys):
    assert main(["train", "--data", str(dataset), "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "holds no run to continue" in capsys.readouterr().err


def test_resume_refuses_other_data(dataset, tmp_path, capsys, tiny_bert_dir, tiny_vit_dir):
    run = tmp_path / "run"
    assert _train(dataset, run, *_tiny(tiny_bert_dir, tiny_vit_dir)) == 0
    (dataset / "data" / "1000.txt").write_text("changed text")
    capsys.readouterr()
    assert main(["train", "--data", str(dataset), "--out", str(run), "--resume"]) == 2
    assert "trained on other data" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the loop and the optimizer state


def test_optimizer_state_round_trips_without_pickle():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, betas=(0.8, 0.9))
    for _ in range(3):
        model(torch.randn(4, 3)).sum().backward()
        optimizer.step()
    tensors, structure = flatten_optimizer_state(optimizer.state_dict())
    assert all(isinstance(t, torch.Tensor) for t in tensors.values())
    json.dumps(structure)  # the rest is plain JSON
    fresh = torch.optim.AdamW(nn.Linear(3, 2).parameters(), lr=0.01, betas=(0.8, 0.9))
    fresh.load_state_dict(unflatten_optimizer_state(tensors, json.loads(json.dumps(structure))))
    restored = fresh.state_dict()
    assert restored["param_groups"] == optimizer.state_dict()["param_groups"]
    for pid, entry in optimizer.state_dict()["state"].items():
        assert all(torch.equal(entry[k], restored["state"][pid][k]) for k in entry)


class _Dropout(nn.Module):
    """A model whose training depends on the dropout RNG."""

    n_classes = 3

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.5), nn.Linear(16, 3))

    def encoder_parameter_groups(self):
        return []

    def forward(self, batch):
        return self.net(batch["x"])


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_fit_interrupted_and_resumed_equals_uninterrupted(tmp_path, ema_decay):
    n = 90
    labels = torch.arange(n) % 3
    features = {"x": torch.nn.functional.one_hot(labels, 4).float() + 0.8 * torch.randn(n, 4)}
    config = TrainConfig(epochs=5, patience=10, batch_size=8, lr=0.01, ema_decay=ema_decay)
    train_idx, val_idx = np.arange(0, 60), np.arange(60, 90)

    torch.manual_seed(1)
    whole = fit(_Dropout(), features, labels, train_idx, val_idx, config, torch.device("cpu"))

    class Interrupt(Exception):
        pass

    def stop_after_two(record):
        if record["epoch"] == 2:
            raise Interrupt

    checkpoint = tmp_path / "checkpoint.safetensors"
    torch.manual_seed(1)
    with pytest.raises(Interrupt):
        fit(_Dropout(), features, labels, train_idx, val_idx, config, torch.device("cpu"), on_epoch_end=stop_after_two,
            checkpoint=checkpoint, checkpoint_info={"fold": 0})
    assert read_info(checkpoint)["epoch"] == 2 and read_info(checkpoint)["fold"] == 0
    torch.manual_seed(123)  # another initialisation and RNG state: the checkpoint must restore everything
    resumed = fit(_Dropout(), features, labels, train_idx, val_idx, config, torch.device("cpu"), checkpoint=checkpoint)

    strip = lambda history: [{k: v for k, v in r.items() if k != "seconds"} for r in history]  # noqa: E731
    assert strip(resumed.history) == strip(whole.history) and len(whole.history) == 5
    assert resumed.best_epoch == whole.best_epoch
    assert np.array_equal(resumed.val_probs, whole.val_probs)
    assert all(torch.equal(resumed.best_state[k], whole.best_state[k]) for k in whole.best_state)
