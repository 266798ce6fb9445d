"""``torchrun`` shards the folds over processes (gloo on CPU): same run folder and metrics as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmsent.cli import main
from mmsent.distributed import Shard

ARGS = ["--epochs", "2", "--folds", "3", "--batch-size", "8", "--dim", "16", "--ffn-dim", "32", "--workers", "0",
        "--set", "text.max_length=16", "--set", "image.image_size=32", "--fusion", "concat"]


def test_folds_are_dealt_round_robin():
    shards = [Shard(rank=r, world_size=3) for r in range(3)]
    owners = [[s.rank for s in shards if s.owns(fold)] for fold in range(7)]
    assert owners == [[0], [1], [2], [0], [1], [2], [0]]
    assert Shard().owns(5) and Shard().is_main


def _torchrun(processes: int, argv: list[str]) -> subprocess.CompletedProcess:
    """``torchrun -m mmsent ARGV`` with this checkout's package, one thread a process; it must succeed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "mmsent", *argv]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _main_on_one_thread(argv: list[str]) -> None:
    """``main(argv)`` with one torch thread, as each torchrun process has: the same arithmetic, bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.multiprocess
@pytest.mark.parametrize("model", ["pretrained", "custom"])
def test_torchrun_two_processes_match_one(model, dataset, tmp_path, tiny_bert_dir, tiny_vit_dir):
    encoders = (["--text-encoder", tiny_bert_dir, "--image-encoder", tiny_vit_dir, "--text-train-layers", "1"]
                if model == "pretrained" else
                ["--model", "custom", "--custom-dim", "16", "--custom-heads", "2", "--custom-ffn-dim", "32",
                 "--custom-layers", "1", "--custom-image-size", "32", "--set", "custom.widths=8,16",
                 "--set", "custom.blocks=1,1"])
    argv = ["train", "--data", str(dataset), *ARGS, *encoders, "--device", "cpu"]
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    _main_on_one_thread([*argv, "--out", str(single)])
    done = _torchrun(2, [*argv, "--out", str(sharded)])

    one, two = (json.loads((run / "metrics.json").read_text()) for run in (single, sharded))
    assert two["processes"] == 2
    assert one["folds"] == two["folds"]  # fold k was trained by process k % 2, with the same seeds and data
    assert one["cv"] == two["cv"]
    assert (single / "oof_predictions.csv").read_text() == (sharded / "oof_predictions.csv").read_text()
    assert sorted(p.parent.name for p in sharded.glob("folds/fold_*/model.safetensors")) == [
        "fold_0", "fold_1", "fold_2"]
    assert done.stdout.count("5-fold") == 0 and done.stdout.count("3-fold CV") == 1  # one summary, from process 0
    assert "(process 1)" in done.stdout


@pytest.mark.slow
@pytest.mark.multiprocess
def test_torchrun_predicts_a_table_in_shards_merged_in_table_order(dataset, tmp_path, tiny_bert_dir, tiny_vit_dir):
    """``torchrun -m mmsent predict --out OUT.csv`` over a table: each process predicts its chunks, process 0 merges
    them; the file equals one process's, row for row."""
    run, table = tmp_path / "run", tmp_path / "posts.csv"
    encoders = ["--text-encoder", tiny_bert_dir, "--image-encoder", tiny_vit_dir]
    assert main(["train", "--data", str(dataset), *ARGS, *encoders, "--out", str(run)]) == 0
    assert main(["convert", "--data", str(dataset), "--out", str(table)]) == 0
    single = tmp_path / "single.csv"
    argv = ["predict", "--run", str(run), "--data", str(table), "--all-rows", "--chunk-size", "5", "--device", "cpu"]
    _main_on_one_thread([*argv, "--out", str(single)])
    sharded = tmp_path / "sharded.csv"
    # "--" ends torchrun's own options: its parser would take predict's --run for an abbreviation of --run-path
    _torchrun(2, ["--", *argv, "--out", str(sharded)])
    rows = single.read_text().splitlines()
    assert len(rows) == 1 + 30  # the header, then every post of the table (24 labelled + 6 to predict)
    assert sharded.read_text().splitlines() == rows
    assert not list(tmp_path.glob("sharded.csv.shard-*"))  # the shards are merged and removed
