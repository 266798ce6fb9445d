"""The stacker sized by the members' classes, not the default three: two and five classes, and classes absent from a
fold's training posts; an end-to-end ``mmsent ensemble --stack`` over a two-class table (slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmsent.errors import InputError
from mmsent.stacking import cross_fitted_probabilities, fit_stacker


def _linear_data(classes: int, n: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    inputs = rng.normal(size=(n, 6))
    labels = (inputs @ rng.normal(size=(6, classes))).argmax(1)
    return inputs, labels


@pytest.mark.parametrize("classes", [2, 5])
def test_fit_stacker_has_a_column_per_class(classes):
    inputs, labels = _linear_data(classes)
    assert set(labels) == set(range(classes))
    stacker = fit_stacker(inputs, labels, 10.0, classes=classes)
    probs = stacker.probabilities(inputs)
    assert stacker.weights.shape == (classes, 6) and probs.shape == (200, classes)
    assert np.allclose(probs.sum(1), 1.0) and (probs.argmax(1) == labels).mean() >= 0.9
    folds = [(np.arange(100, 200), np.arange(100)), (np.arange(100), np.arange(100, 200))]
    crossed = cross_fitted_probabilities(inputs, labels, folds, 1.0, classes=classes)
    assert crossed.shape == (200, classes) and np.allclose(crossed.sum(1), 1.0)


def test_a_class_absent_from_a_folds_training_posts_still_gets_a_column():
    inputs, labels = _linear_data(5, seed=1)
    only_in_a = np.flatnonzero(labels == 4)  # every post of class 4 in fold a: fold b's stacker never saw it
    fold_a = np.concatenate([only_in_a, np.flatnonzero(labels != 4)[::2]])
    fold_b = np.setdiff1d(np.arange(len(labels)), fold_a)
    stacker = fit_stacker(inputs[fold_b], labels[fold_b], classes=5)
    probs = stacker.probabilities(inputs)
    assert probs.shape == (200, 5) and np.all(probs[:, 4] < 1e-6) and np.allclose(probs.sum(1), 1.0)
    assert json.loads(json.dumps(stacker.to_dict()))["bias"][4] < -1e3  # finite: JSON-writable
    crossed = cross_fitted_probabilities(inputs, labels, [(fold_b, fold_a), (fold_a, fold_b)], 1.0, classes=5)
    assert crossed.shape == (200, 5) and np.all(crossed[only_in_a, 4] < 1e-6)


def test_one_class_is_a_user_error():
    inputs, _ = _linear_data(3)
    with pytest.raises(InputError, match="at least two classes"):
        fit_stacker(inputs, np.zeros(len(inputs), dtype=np.int64), classes=3)
    with pytest.raises(ValueError, match="class indices"):
        fit_stacker(inputs, np.full(len(inputs), 3), classes=3)


@pytest.mark.slow
def test_stacked_ensemble_of_a_two_class_table(tmp_path, capsys, tiny_bert_dir, tiny_vit_dir):
    from helpers import train_fast
    from test_label_sets import TWO, write_table

    from mmsent.cli import main
    from mmsent.runfolder import read_oof

    table = write_table(tmp_path, TWO, per_class=6, n_test=3)
    encoders = {"text.name": tiny_bert_dir, "image.name": tiny_vit_dir, "image.image_size": 32}
    runs = [tmp_path / "concat", tmp_path / "cross"]
    for run, fusion in zip(runs, ("concat", "cross_attention")):
        train_fast(table, run, **encoders, **{"fusion.name": fusion})
    ens = tmp_path / "ens"
    assert main(["ensemble", "--out", str(ens), "--stack", "--data", str(table), *map(str, runs)]) == 0
    assert np.array(json.loads((ens / "ensemble.json").read_text())["stacker"]["weights"]).shape == (2, 2 * 2 + 4)
    oof = read_oof(ens)
    assert oof.classes == TWO and oof.probs.shape == (12, 2) and np.allclose(oof.probs.sum(1), 1.0, atol=1e-4)
    out = tmp_path / "pred.csv"
    assert main(["predict", "--run", str(ens), "--data", str(table), "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "id,label,p_negative,p_positive,error" and len(lines) == 4
    assert {line.split(",")[1] for line in lines[1:]} <= set(TWO)


def test_nested_cross_fitting_never_scores_a_fold_with_what_it_chose_or_fitted_on():
    from mmsent.data.folds import stratified_folds
    from mmsent.stacking import STACK_C_GRID, nested_cross_fitted_probabilities

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    inputs = rng.normal(size=(300, 5)) + np.eye(3)[labels] @ rng.normal(size=(3, 5))
    folds = stratified_folds(labels.tolist(), 5, 0)
    probs, chosen = nested_cross_fitted_probabilities(inputs, labels, folds, classes=3)
    assert probs.shape == (300, 3) and len(chosen) == 5 and set(chosen) <= set(STACK_C_GRID)
    _, held = folds[2]
    scrambled = labels.copy()
    scrambled[held] = rng.permutation(scrambled[held])  # fold 2's labels cannot reach fold 2's figures
    again, chosen_again = nested_cross_fitted_probabilities(inputs, scrambled, folds, classes=3)
    assert np.allclose(again[held], probs[held]) and chosen_again[2] == chosen[2]
    assert (probs.argmax(1) == labels).mean() > 0.5  # and it learns
