"""``mmsent ensemble``: averaged out-of-fold probabilities of runs on the same folds, and prediction with them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from mmsent.cli import main
from mmsent.data.dataset import open_split
from mmsent.ensemble import read_oof
from mmsent.predict import LoadedEnsemble, load_run

from test_cli import _train  # tests/ is on sys.path (pytest rootdir import mode)


@pytest.fixture
def two_runs(dataset, tmp_path):
    first, second = tmp_path / "concat", tmp_path / "cross"
    _train(dataset, first, "--fusion", "concat")
    _train(dataset, second, "--fusion", "cross_attention", "--epochs", "2")
    return first, second


def test_ensemble_averages_out_of_fold_probabilities(two_runs, dataset, tmp_path, capsys):
    first, second = two_runs
    ens = tmp_path / "ens"
    assert main(["ensemble", "--out", str(ens), str(first), str(second)]) == 0
    assert "ensemble of 2 (mean probabilities)" in capsys.readouterr().out
    guids, names, probs = read_oof(ens)
    _, _, p1 = read_oof(first)
    _, _, p2 = read_oof(second)
    np.testing.assert_allclose(probs, (p1 + p2) / 2, atol=1e-5)
    metrics = json.loads((ens / "metrics.json").read_text())
    labels = np.array([["negative", "neutral", "positive"].index(n) for n in names])
    assert metrics["out_of_fold"]["accuracy"] == pytest.approx(float((probs.argmax(1) == labels).mean()))
    assert len(metrics["folds"]) == 2 and [m["run"] for m in metrics["members"]] == ["../concat", "../cross"]

    predictions = tmp_path / "pred.txt"
    assert main(["predict", "--run", str(ens), "--data", str(dataset), "--out", str(predictions)]) == 0
    assert "ensemble of 2 runs, 4 fold models" in capsys.readouterr().out
    loaded = load_run(ens)
    assert isinstance(loaded, LoadedEnsemble) and loaded.modalities == ["text", "image"]
    split = open_split(dataset, dataset / "test_without_label.txt", labelled=False)
    members = [load_run(first).predict_split(split, log=lambda *a: None),
               load_run(second).predict_split(split, log=lambda *a: None)]
    ensemble_probs = loaded.predict_split(split, log=lambda *a: None)
    np.testing.assert_allclose(ensemble_probs, np.mean(members, axis=0), atol=1e-6)
    rows = predictions.read_text().splitlines()[1:]
    assert [r.split(",")[1] for r in rows] == [["negative", "neutral", "positive"][i] for i in ensemble_probs.argmax(1)]
    one = loaded.predict(text="a good day", image=dataset / "data" / f"{split.guids[0]}.jpg")
    assert sum(one.probabilities.values()) == pytest.approx(1.0, abs=1e-5)

    assert main(["report", "--out", str(tmp_path / "report"), str(ens)]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "ensemble of 2 (mean probabilities)" in report and "../concat" in report


def test_ensemble_refuses_runs_on_other_folds(two_runs, dataset, tmp_path, capsys):
    first, _ = two_runs
    other = tmp_path / "seed7"
    _train(dataset, other, "--seed", "7")
    capsys.readouterr()
    assert main(["ensemble", "--out", str(tmp_path / "ens"), str(first), str(other)]) == 2
    err = capsys.readouterr().err
    assert "differs" in err and "seed" in err and "Traceback" not in err
    assert main(["ensemble", "--out", str(tmp_path / "ens"), str(first)]) == 2
    assert "at least two runs" in capsys.readouterr().err


def test_moved_ensemble_without_its_members_is_a_clear_error(two_runs, tmp_path, capsys):
    first, second = two_runs
    ens = tmp_path / "ens"
    assert main(["ensemble", "--out", str(ens), str(first), str(second)]) == 0
    moved = tmp_path / "deeper" / "ens"  # "../concat" no longer points at the member
    moved.parent.mkdir()
    shutil.move(str(ens), str(moved))
    capsys.readouterr()
    assert main(["predict", "--run", str(moved), "--text", "hello"]) == 2
    assert "member runs not found" in capsys.readouterr().err
