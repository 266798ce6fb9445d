"""Smoke test on the real MVSA data when ../shared/data/mvsa is present (skipped otherwise)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmsent.cli import main

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mvsa"
pytestmark = [pytest.mark.realdata, pytest.mark.slow, pytest.mark.skipif(not (REAL / "train.txt").is_file(), reason=f"no real data at {REAL}")]


def test_check_real_data(capsys):
    assert main(["check", "--data", str(REAL)]) == 0
    out = capsys.readouterr().out
    assert "train: 4000 posts" in out and "test: 511 posts" in out
    assert "cp1252" in out  # about a quarter of the texts are not UTF-8


def test_train_and_predict_on_a_real_subset(tmp_path):
    rows = (REAL / "train.txt").read_text().splitlines()
    subset = tmp_path / "subset.txt"
    subset.write_text("\n".join(rows[:61]) + "\n")
    tests = (REAL / "test_without_label.txt").read_text().splitlines()
    test_subset = tmp_path / "test_subset.txt"
    test_subset.write_text("\n".join(tests[:11]) + "\n")
    run = tmp_path / "run"
    assert main(["train", "--data", str(REAL), "--train-file", str(subset), "--out", str(run), "--epochs", "1",
                 "--folds", "2", "--workers", "0"]) == 0
    assert len(json.loads((run / "metrics.json").read_text())["folds"]) == 2
    out = tmp_path / "pred.txt"
    assert main(["predict", "--run", str(run), "--data", str(REAL), "--test-file", str(test_subset),
                 "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 11
