"""Figures a user can trust: the scored fold never chooses, the fixed-split protocol and ``mmsent evaluate``,
temperature scaling, and runs over seeds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from mmsent import cv as cv_module
from mmsent.calibration import (Calibration, apply_temperature, expected_calibration_error, fit_calibration,
                                fit_temperature, negative_log_likelihood)
from mmsent.cli import main
from mmsent.config import LABELS, TrainConfig
from mmsent.data.dataset import open_data
from mmsent.data.folds import stratified_folds
from mmsent.evaluation import classification_report, make_split
from mmsent.experiments import display_rows
from mmsent.predict import load_run_folder
from mmsent.runfolder import read_oof

from helpers import FAST, train_run, write_dataset

pytestmark = pytest.mark.slow  # trains runs: left out of the quick subset (pytest -m "not slow")


@pytest.fixture
def larger_dataset(tmp_path) -> Path:
    return write_dataset(tmp_path / "mvsa60", n_train=60, n_test=6)


def _spy_fit(monkeypatch) -> list[tuple[np.ndarray, np.ndarray]]:
    """Record the (trained-on, chosen-on) posts of every call of the training loop from cross-validation."""
    calls = []
    real_fit = cv_module.fit

    def spy(model, features, labels, train_idx, val_idx, *args, **kwargs):
        calls.append((np.asarray(train_idx).copy(), np.asarray(val_idx).copy()))
        return real_fit(model, features, labels, train_idx, val_idx, *args, **kwargs)

    monkeypatch.setattr(cv_module, "fit", spy)
    return calls


def test_inner_part_of_the_training_fold_chooses_the_epoch(larger_dataset, tmp_path, monkeypatch):
    calls = _spy_fit(monkeypatch)
    metrics = train_run(larger_dataset, tmp_path / "run", "--folds", "3", "--epochs", "2", "--inner-val", "0.2")
    labels = np.array(open_data(larger_dataset).labels)
    folds = stratified_folds(labels, 3, 42)
    assert len(calls) == 3
    for (train_idx, scored_idx), (fit_idx, chosen_on) in zip(folds, calls):
        assert not set(chosen_on) & set(scored_idx)  # the scored fold never chooses
        assert not set(fit_idx) & set(scored_idx)
        assert sorted([*fit_idx, *chosen_on]) == sorted(train_idx)  # the inner part comes out of the training fold
        assert len(chosen_on) == round(0.2 * len(train_idx))
        assert set(labels[chosen_on]) == {0, 1, 2}  # stratified
    assert metrics["protocol"]["name"] == "cv_inner_selection" and metrics["protocol"]["inner_val"] == 0.2
    for row, (train_idx, scored_idx) in zip(metrics["folds"], folds):
        assert row["val_size"] == len(scored_idx) and row["train_size"] + row["selection_size"] == len(train_idx)


def test_old_protocol_chooses_on_the_scored_fold(dataset, tmp_path, monkeypatch, capsys):
    calls = _spy_fit(monkeypatch)
    metrics = train_run(dataset, tmp_path / "run", "--select-on", "scored_fold")
    labels = open_data(dataset).labels
    for (train_idx, scored_idx), (fit_idx, chosen_on) in zip(stratified_folds(labels, 2, 42), calls):
        assert np.array_equal(fit_idx, train_idx) and np.array_equal(chosen_on, scored_idx)
    assert metrics["protocol"]["name"] == "cv_select_on_scored_fold"
    assert "chose each fold's epoch on the fold it scores" in capsys.readouterr().out


def test_scored_fold_labels_never_reach_its_model(larger_dataset, tmp_path, monkeypatch):
    """Change only the labels of fold 0's posts: fold 0's model (training and epoch choice) must not change."""
    labels = np.array(open_data(larger_dataset).labels)
    folds = stratified_folds(labels, 3, 42)
    monkeypatch.setattr(cv_module, "stratified_folds", lambda *args: folds)  # the same folds for both label sets
    args = ("--folds", "3", "--epochs", "3", "--patience", "1", "--inner-val", "0.2", "--lr", "3e-3")
    first = train_run(larger_dataset, tmp_path / "a", *args)
    rows = (larger_dataset / "train.txt").read_text().splitlines()
    scored = set(folds[0][1].tolist())
    relabelled = [rows[0]] + [f"{row.split(',')[0]},{LABELS[(labels[i] + 1) % 3] if i in scored else row.split(',')[1]}"
                              for i, row in enumerate(rows[1:])]
    (larger_dataset / "train.txt").write_text("\n".join(relabelled) + "\n")
    second = train_run(larger_dataset, tmp_path / "b", *args)
    weights = [load_file(tmp_path / run / "folds" / "fold_0" / "model.safetensors") for run in ("a", "b")]
    assert weights[0].keys() == weights[1].keys()
    assert all(np.array_equal(weights[0][k].numpy(), weights[1][k].numpy()) for k in weights[0])
    assert first["folds"][0]["best_epoch"] == second["folds"][0]["best_epoch"]
    assert first["folds"][0]["accuracy"] != second["folds"][0]["accuracy"]  # the fold is still scored on its labels


def test_inner_val_out_of_range_is_a_one_line_error(dataset, tmp_path, capsys):
    assert main(["train", "--data", str(dataset), "--out", str(tmp_path / "r"), *FAST, "--inner-val", "1.5"]) == 2
    err = capsys.readouterr().err
    assert "inner_val must be between 0 and 1" in err and len(err.strip().splitlines()) == 1


def _overconfident(n=3000, sharpen=3.0, seed=0):
    """Labels drawn from calibrated probabilities, then logits sharpened by ``sharpen`` (over-confident)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.0, size=(n, 3))
    calibrated = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(3, p=p) for p in calibrated])
    sharp = np.exp(sharpen * logits)
    return sharp / sharp.sum(1, keepdims=True), labels


def test_temperature_of_overconfident_probabilities_exceeds_one_and_lowers_ece():
    probs, labels = _overconfident()
    temperature = fit_temperature(probs, labels)
    assert 2.5 < temperature < 3.5  # recovers the sharpening
    scaled = apply_temperature(probs, temperature)
    assert expected_calibration_error(scaled, labels) < 0.5 * expected_calibration_error(probs, labels)
    assert negative_log_likelihood(scaled, labels) < negative_log_likelihood(probs, labels)
    assert np.array_equal(scaled.argmax(1), probs.argmax(1))  # the labels do not change
    assert np.allclose(scaled.sum(1), 1.0)
    assert apply_temperature(probs, 1.0) is probs


def test_reported_calibration_is_cross_fitted():
    probs, labels = _overconfident(n=1500)
    fold_of = np.arange(len(labels)) % 5
    calibration = fit_calibration(probs, labels, fold_of)
    assert calibration.temperature > 1 and len(calibration.fold_temperatures) == 5
    assert calibration.ece_after < calibration.ece_before and calibration.nll_after < calibration.nll_before
    expected = np.empty_like(probs)
    for fold in range(5):
        held = fold_of == fold
        assert calibration.fold_temperatures[fold] == pytest.approx(fit_temperature(probs[~held], labels[~held]))
        expected[held] = apply_temperature(probs[held], calibration.fold_temperatures[fold])
    assert calibration.ece_after == pytest.approx(expected_calibration_error(expected, labels))
    assert sum(b["count"] for b in calibration.reliability_after) == len(labels)
    assert Calibration.from_dict(json.loads(json.dumps(calibration.to_dict()))).temperature == calibration.temperature


def test_run_saves_its_temperature_and_prediction_applies_it(dataset, tmp_path):
    run = tmp_path / "run"
    metrics = train_run(dataset, run, "--epochs", "2")
    saved = json.loads((run / "calibration.json").read_text())
    assert saved["temperature"] == metrics["calibration"]["temperature"] > 0
    assert {"ece_before", "ece_after", "nll_before", "nll_after"} <= set(metrics["calibration"])
    calibrated = load_run_folder(run)
    assert calibrated.temperature == saved["temperature"]
    result = calibrated.predict(text="love great happy", image=None)
    (run / "calibration.json").unlink()  # a run written before calibration: T = 1
    plain = load_run_folder(run)
    assert plain.temperature == 1.0 and "uncalibrated" in plain.description
    raw = np.array(list(plain.predict(text="love great happy", image=None).probabilities.values()))
    assert np.allclose(list(result.probabilities.values()), apply_temperature(raw[None], saved["temperature"])[0],
                       atol=1e-5)


def test_run_without_the_new_config_keys_loads_with_their_defaults(dataset, tmp_path):
    run = tmp_path / "run"
    train_run(dataset, run)
    config = json.loads((run / "config.json").read_text())
    del config["train"]["select_on"], config["train"]["inner_val"]
    (run / "config.json").write_text(json.dumps(config))
    loaded = load_run_folder(run)
    assert loaded.config.train.select_on == TrainConfig().select_on and loaded.config.train.inner_val == 0.1


def test_evaluation_matches_scikit_learn_on_a_known_confusion():
    confusion = np.array([[5, 2, 1], [1, 3, 0], [2, 1, 9]])  # rows: true, columns: predicted
    y_true = np.repeat(np.repeat([0, 1, 2], 3), confusion.ravel())
    y_pred = np.repeat(np.tile([0, 1, 2], 3), confusion.ravel())
    report = classification_report(y_true, y_pred, LABELS)
    assert report["confusion"] == confusion.tolist() and list(report["per_class"]) == list(LABELS)
    assert report["accuracy"] == pytest.approx(17 / 24)
    assert report["weighted_f1"] == pytest.approx(f1_score(y_true, y_pred, average="weighted"))
    assert report["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert report["per_class"]["neutral"]["precision"] == pytest.approx(3 / 6)
    assert report["per_class"]["neutral"]["recall"] == pytest.approx(3 / 4)
    assert report["per_class"]["positive"]["support"] == 12


def test_split_train_on_validation_file_and_evaluate(dataset, tmp_path, capsys, monkeypatch):
    split_dir, run = tmp_path / "split", tmp_path / "run"
    assert main(["split", "--data", str(dataset), "--out", str(split_dir), "--seed", "3"]) == 0
    parts = {name: (split_dir / f"{name}.txt").read_text().splitlines()[1:] for name in ("train", "val", "test")}
    guids = {name: {row.split(",")[0] for row in rows} for name, rows in parts.items()}
    assert not guids["train"] & guids["val"] and not guids["train"] & guids["test"] and not guids["val"] & guids["test"]
    assert sum(map(len, guids.values())) == 24
    for name in ("val", "test"):
        assert sorted(row.split(",")[1] for row in parts[name]) == sorted(LABELS)  # one per class of 24 posts at 8:1:1
    assert json.loads((split_dir / "split.json").read_text())["seed"] == 3
    assert main(["train", "--data", str(dataset), "--train-file", str(split_dir / "train.txt"), "--val-file",
                 str(split_dir / "val.txt"), "--out", str(run), *FAST, "--epochs", "2"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["protocol"]["name"] == "fixed_split" and len(metrics["folds"]) == 1
    assert metrics["folds"][0]["train_size"] == 18 and metrics["folds"][0]["val_size"] == 3
    history = json.loads((run / "folds" / "fold_0" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]  # --epochs 2, both run (patience is larger)
    capsys.readouterr()

    # the evaluation of known predictions, through the command: 2 test posts right, 1 wrong
    test_labels = [LABELS.index(row.split(",")[1]) for row in parts["test"]]
    predicted = [test_labels[0], test_labels[1], (test_labels[2] + 1) % 3]
    real_load = load_run_folder

    def fixed_predictions(*args, **kwargs):
        loaded = real_load(*args, **kwargs)
        loaded.predict_split = lambda split, log=print: np.eye(3, dtype=np.float32)[predicted] * 0.7 + 0.1
        return loaded

    monkeypatch.setattr("mmsent.predict.load_run_folder", fixed_predictions)
    assert main(["evaluate", "--run", str(run), "--data", str(dataset), "--labels-file",
                 str(split_dir / "test.txt")]) == 0
    out = capsys.readouterr().out
    evaluation = json.loads((run / "evaluations" / "test.json").read_text())
    assert evaluation["confusion"] == confusion_matrix(test_labels, predicted, labels=[0, 1, 2]).tolist()
    assert evaluation["accuracy"] == pytest.approx(2 / 3)
    assert evaluation["weighted_f1"] == pytest.approx(f1_score(test_labels, predicted, average="weighted"))
    assert evaluation["macro_f1"] == pytest.approx(f1_score(test_labels, predicted, average="macro",
                                                            labels=[0, 1, 2], zero_division=0))
    precision, recall, f1, support = precision_recall_fscore_support(test_labels, predicted, labels=[0, 1, 2],
                                                                     zero_division=0)
    for c, name in enumerate(LABELS):
        assert evaluation["per_class"][name] == pytest.approx({"precision": precision[c], "recall": recall[c],
                                                               "f1": f1[c], "support": support[c]})
    assert evaluation["posts_seen_in_training"] == 0
    assert "accuracy 0.6667" in out and (run / "evaluations" / "test.md").is_file()

    report = tmp_path / "report"
    assert main(["report", "--out", str(report), str(run)]) == 0
    md = (report / "report.md").read_text()
    assert "held-out test.txt" in md and "reliability diagram" in md and "fixed split" in md


def test_evaluate_and_split_user_errors_are_one_line(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    train_run(dataset, run)
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--data", str(dataset)]) == 2  # no DATA/test.txt
    assert main(["split", "--data", str(dataset), "--out", str(tmp_path / "s"), "--ratios", "8,1"]) == 2
    assert main(["train", "--data", str(dataset), "--out", str(tmp_path / "x"), "--seeds", "1"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and "labelled file not found" in errors[0] and "--ratios" in errors[1]
    assert "at least two different seeds" in errors[2]
    # scoring a run on its own training posts is not held out, and says so
    assert main(["evaluate", "--run", str(run), "--data", str(dataset), "--labels-file",
                 str(dataset / "train.txt")]) == 0
    assert "24 of these posts were among the run's training posts" in capsys.readouterr().out
    assert json.loads((run / "evaluations" / "train.json").read_text())["posts_seen_in_training"] == 24


def test_make_split_is_stratified_and_reproducible():
    labels = np.repeat([0, 1, 2], [600, 100, 300])
    first, again = make_split(labels, (0.8, 0.1, 0.1), 42), make_split(labels, (0.8, 0.1, 0.1), 42)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert [len(first[k]) for k in ("train", "val", "test")] == [800, 100, 100]
    assert np.bincount(labels[first["test"]]).tolist() == [60, 10, 30]


def test_seeds_train_one_run_per_seed_and_report_the_spread(dataset, tmp_path, capsys):
    out = tmp_path / "seeds"
    assert main(["train", "--data", str(dataset), "--out", str(out), *FAST, "--seeds", "1,2"]) == 0
    summary = json.loads((out / "seeds.json").read_text())
    means = [json.loads((out / f"seed_{s}" / "metrics.json").read_text())["cv"]["accuracy_mean"] for s in (1, 2)]
    assert json.loads((out / "seed_2" / "config.json").read_text())["train"]["seed"] == 2
    assert summary["over_seeds"]["accuracy_mean"] == pytest.approx(np.mean(means))
    assert summary["over_seeds"]["accuracy_seed_std"] == pytest.approx(np.std(means))
    printed = capsys.readouterr().out
    assert "over 2 seeds" in printed and "the seeds averaged (average/" in printed
    averaged = (read_oof(out / "seed_1").probs + read_oof(out / "seed_2").probs) / 2  # each post's rows, same order
    np.testing.assert_allclose(read_oof(out / "average").probs, averaged, atol=1e-5)
    assert summary["average"]["out_of_fold"]["accuracy"] == pytest.approx(
        json.loads((out / "average" / "metrics.json").read_text())["out_of_fold"]["accuracy"])
    assert main(["predict", "--run", str(out / "average"), "--data", str(dataset), "--out",
                 str(tmp_path / "p.txt")]) == 0
    assert main(["predict", "--run", str(out), "--data", str(dataset), "--out", str(tmp_path / "p.txt")]) == 2
    assert "one run per seed" in capsys.readouterr().err
    assert main(["report", "--out", str(tmp_path / "report"), str(out)]) == 0
    assert "mean ± std over seeds" in (tmp_path / "report" / "report.md").read_text()


def test_grid_tables_mark_differences_within_the_seed_spread():
    rows = [{"fusion": "a", "accuracy": 0.730, "accuracy_std": 0.01, "accuracy_seed_std": 0.004,
             "weighted_f1": 0.7, "macro_f1": 0.6, "seeds": [1, 2, 3], "run": "cells/a"},
            {"fusion": "b", "accuracy": 0.727, "accuracy_std": 0.01, "accuracy_seed_std": 0.005,
             "weighted_f1": 0.7, "macro_f1": 0.6, "seeds": [1, 2, 3], "run": "cells/b"},
            {"fusion": "c", "accuracy": 0.700, "accuracy_std": 0.01, "accuracy_seed_std": 0.005,
             "weighted_f1": 0.7, "macro_f1": 0.6, "seeds": [1, 2, 3], "run": "cells/c"}]
    shown = display_rows(rows)
    assert shown[0]["below the best"] == "-" and shown[0]["± std over seeds"] == "0.0040"
    assert shown[1]["below the best"] == "0.0030 (within seed spread)"
    assert shown[2]["below the best"] == "0.0300 (beyond seed spread)"
    assert list(shown[0]) == ["fusion", "accuracy (mean ± std over folds)", "± std over seeds", "below the best",
                              "weighted F1", "macro F1"]


def test_sweep_with_seeds_trains_every_cell_per_seed(dataset, tmp_path):
    out = tmp_path / "sweep"
    assert main(["sweep", "--data", str(dataset), "--out", str(out), *FAST, "--grid", "heads=2,4",
                 "--seeds", "1,2"]) == 0
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert [r["seeds"] for r in rows] == [[1, 2], [1, 2]] and all("accuracy_seed_std" in r for r in rows)
    assert (out / "cells" / "fusion.heads=2" / "seed_2" / "metrics.json").is_file()
    assert "± std over seeds" in (out / "sweep.md").read_text()


def test_calibrate_gives_a_run_without_a_temperature_the_one_train_fits(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    metrics = train_run(dataset, run, "--epochs", "2")
    fitted = json.loads((run / "calibration.json").read_text())["temperature"]
    (run / "calibration.json").unlink()  # as a run trained before calibration was saved
    (run / "metrics.json").write_text(json.dumps({k: v for k, v in metrics.items() if k != "calibration"}))
    assert load_run_folder(run).temperature == 1.0
    assert main(["calibrate", "--run", str(run)]) == 0
    assert "expected calibration error" in capsys.readouterr().out
    # the same fit from the 5-decimal out-of-fold file
    assert load_run_folder(run).temperature == pytest.approx(fitted, rel=2e-3)
    assert json.loads((run / "metrics.json").read_text())["calibration"]["temperature"] == pytest.approx(fitted,
                                                                                                      rel=2e-3)


def test_a_run_from_before_the_inner_split_is_continued_and_reused_under_its_own_protocol(dataset, tmp_path,
                                                                                           capsys):
    from mmsent.runfolder import trained_config
    from mmsent.experiments import _cell_state

    run = tmp_path / "run"
    train_run(dataset, run, "--select-on", "scored_fold")
    config = json.loads((run / "config.json").read_text())
    del config["train"]["select_on"], config["train"]["inner_val"]  # as written before the option existed
    del config["data"]  # and before the label set was recorded
    (run / "config.json").write_text(json.dumps(config))
    assert load_run_folder(run).config.train.select_on == "inner"  # loading: the defaults (nothing depends on it)
    assert load_run_folder(run).classes == ("negative", "neutral", "positive")  # a run saved without labels: the three
    assert trained_config(run).train.select_on == "scored_fold"  # continuing or reusing: how it was trained
    base = trained_config(run)
    base.train.select_on = "inner"
    with pytest.raises(cv_module.RunError, match="train.select_on: 'scored_fold' -> 'inner'"):
        _cell_state(run, base)  # a grid under the new protocol does not keep it as one of its cells
    assert _cell_state(run, trained_config(run)) == "finished"
    assert main(["train", "--data", str(dataset), "--out", str(run), "--resume", *FAST]) == 0  # finished folds kept
    assert "kept" in capsys.readouterr().out
