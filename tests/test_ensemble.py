"""``mmsent ensemble``: averaged out-of-fold probabilities of runs on the same folds, and prediction with them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from mmsent.calibration import apply_temperature
from mmsent.cli import main
from mmsent.config import LABELS
from mmsent.data.dataset import open_data
from mmsent.data.folds import stratified_folds
from mmsent.data.text import decode_text
from mmsent.runfolder import read_oof
from mmsent.predict import LoadedEnsemble, load_run_folder
from mmsent.stacking import (LEXICON_TEXT_PREP, Stacker, choose_c, fit_stacker,
                             lexicon_scores, lexicon_scores_of_raw, nested_cross_fitted_probabilities, stack_inputs)

from helpers import train_run, write_dataset

pytestmark = pytest.mark.slow  # trains runs: left out of the quick subset (pytest -m "not slow")


@pytest.fixture
def two_runs(dataset, tmp_path):
    first, second = tmp_path / "concat", tmp_path / "cross"
    train_run(dataset, first, "--fusion", "concat")
    train_run(dataset, second, "--fusion", "cross_attention", "--epochs", "2")
    return first, second


def test_ensemble_averages_out_of_fold_probabilities(two_runs, dataset, tmp_path, capsys):
    first, second = two_runs
    ens = tmp_path / "ens"
    assert main(["ensemble", "--out", str(ens), str(first), str(second)]) == 0
    assert "ensemble of 2 (mean probabilities)" in capsys.readouterr().out
    oof = read_oof(ens)
    names, probs = oof.labels, oof.probs
    p1, p2 = read_oof(first).probs, read_oof(second).probs
    np.testing.assert_allclose(probs, (p1 + p2) / 2, atol=1e-5)
    metrics = json.loads((ens / "metrics.json").read_text())
    labels = np.array([["negative", "neutral", "positive"].index(n) for n in names])
    assert metrics["out_of_fold"]["accuracy"] == pytest.approx(float((probs.argmax(1) == labels).mean()))
    assert len(metrics["folds"]) == 2 and [m["run"] for m in metrics["members"]] == ["../concat", "../cross"]

    predictions = tmp_path / "pred.txt"
    assert main(["predict", "--run", str(ens), "--data", str(dataset), "--out", str(predictions)]) == 0
    assert "ensemble of 2 runs, 4 fold models" in capsys.readouterr().out
    loaded = load_run_folder(ens)
    assert isinstance(loaded, LoadedEnsemble) and loaded.modalities == ["text", "image"]
    split = open_data(dataset, "test")
    members = [load_run_folder(first), load_run_folder(second)]
    for member in members:  # the ensemble averages its members' uncalibrated probabilities, then applies its own T
        member.temperature = 1.0
    members = [member.predict_split(split, log=lambda *a: None) for member in members]
    ensemble_probs = loaded.predict_split(split, log=lambda *a: None)
    assert loaded.temperature == json.loads((ens / "calibration.json").read_text())["temperature"]
    np.testing.assert_allclose(ensemble_probs, apply_temperature(np.mean(members, axis=0), loaded.temperature),
                               atol=1e-6)
    rows = predictions.read_text().splitlines()[1:]
    assert [r.split(",")[1] for r in rows] == [["negative", "neutral", "positive"][i] for i in ensemble_probs.argmax(1)]
    one = loaded.predict(text="a good day", image=dataset / "data" / f"{split.guids[0]}.jpg")
    assert sum(one.probabilities.values()) == pytest.approx(1.0, abs=1e-5)

    assert main(["report", "--out", str(tmp_path / "report"), str(ens)]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "ensemble of 2 (mean probabilities)" in report and "../concat" in report
    assert "reliability diagram of the ensemble's out-of-fold probabilities" in report


def test_runs_of_other_seeds_average_but_do_not_stack(two_runs, dataset, tmp_path, capsys):
    """Seed averaging: members that drew other folds still predicted every post out of fold, so their mean is
    kept (scored on the first member's folds); stacking fits across folds and refuses them, and so does a member
    with another number of folds."""
    first, _ = two_runs
    other = tmp_path / "seed7"
    train_run(dataset, other, "--seed", "7")
    capsys.readouterr()
    ens = tmp_path / "ens"
    assert main(["ensemble", "--out", str(ens), str(first), str(other)]) == 0
    np.testing.assert_allclose(read_oof(ens).probs, (read_oof(first).probs + read_oof(other).probs) / 2, atol=1e-5)
    manifest = json.loads((ens / "ensemble.json").read_text())
    assert manifest["seed"] == 42 and manifest["seeds"] == [42, 7]
    assert load_run_folder(ens).predict(text="a good day").label in LABELS
    assert main(["ensemble", "--stack", "--data", str(dataset), "--out", str(tmp_path / "stacked"), str(first),
                 str(other)]) == 2
    err = capsys.readouterr().err
    assert "differs" in err and "seed" in err and "stacked" in err and "Traceback" not in err
    three_folds = tmp_path / "three"
    train_run(dataset, three_folds, "--folds", "3")
    assert main(["ensemble", "--out", str(tmp_path / "ens3"), str(first), str(three_folds)]) == 2
    assert "folds" in capsys.readouterr().err
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


# ---- --stack: a logistic regression over the members' probabilities and VADER's lexicon scores ------------------

def test_fit_stacker_recovers_a_linear_rule_and_round_trips():
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(300, 5))
    labels = (inputs @ rng.normal(size=(5, 3))).argmax(1)  # a rule the regression can express exactly
    stacker = fit_stacker(inputs, labels, c=100.0, classes=3)
    probs = stacker.probabilities(inputs)
    assert probs.shape == (300, 3) and np.allclose(probs.sum(1), 1.0)
    assert (probs.argmax(1) == labels).mean() >= 0.95
    weak = fit_stacker(inputs, labels, c=1e-4, classes=3)  # a strong penalty pulls the weights towards zero
    assert np.abs(weak.weights).sum() < 0.1 * np.abs(stacker.weights).sum()
    np.testing.assert_allclose(Stacker.from_dict(json.loads(json.dumps(stacker.to_dict()))).probabilities(inputs),
                               probs)
    for broken in ({}, {"weights": [[1.0]], "bias": [0.0], "c": 1.0}):
        with pytest.raises(ValueError, match="malformed"):  # load_run_folder turns it into a RunError naming the file
            Stacker.from_dict(broken)
    with pytest.raises(ValueError, match="takes 5 inputs"):
        stacker.probabilities(inputs[:, :4])


def test_fit_stacker_minimises_the_documented_objective():
    """At the fitted weights the gradient of mean cross-entropy + |weights|^2 / (2 c N) (bias unpenalised) is 0."""
    rng = np.random.default_rng(1)
    inputs, labels, c = rng.normal(size=(120, 4)), rng.integers(0, 3, size=120), 0.5
    stacker = fit_stacker(inputs, labels, c, classes=3)
    residual = stacker.probabilities(inputs) - np.eye(3)[labels]  # d(mean cross-entropy)/d(logits) * N
    grad_weights = residual.T @ inputs / len(labels) + stacker.weights / (c * len(labels))
    np.testing.assert_allclose(grad_weights, 0.0, atol=1e-5)
    np.testing.assert_allclose(residual.mean(0), 0.0, atol=1e-5)


def test_lexicon_scores_read_sentiment_words():
    neg, neu, pos, compound = lexicon_scores_of_raw(["What a wonderful, happy day! http://t.co/x", None]).T
    assert pos[0] > 0.3 and compound[0] > 0.5 and neg[0] == 0.0
    assert (neg[1], neu[1], pos[1], compound[1]) == (0.0, 0.0, 0.0, 0.0)  # no text: VADER's scores of ""


def test_stacked_ensemble_fits_cross_fitted_and_predicts_with_the_stacker(two_runs, dataset, tmp_path, capsys):
    first, second = two_runs
    ens = tmp_path / "stacked"
    assert main(["ensemble", "--out", str(ens), "--stack", "--data", str(dataset), str(first), str(second)]) == 0
    out = capsys.readouterr().out
    assert "ensemble of 2 (mean probabilities)" in out and "ensemble of 2 (stacked, cross-fitted)" in out
    saved = json.loads((ens / "ensemble.json").read_text())
    assert np.array(saved["stacker"]["weights"]).shape == (3, 2 * 3 + 4)  # two members' 3 log-probs + VADER's 4
    metrics = json.loads((ens / "metrics.json").read_text())
    assert metrics["combine"] == "stack" and "averaged_cv" in metrics

    oof = read_oof(ens)
    guids, names, probs = oof.guids, oof.labels, oof.probs
    labels = np.array([LABELS.index(n) for n in names])
    member_probs = [read_oof(run).probs for run in (first, second)]
    split = open_data(dataset)
    texts = dict(zip(split.guids, split.texts(LEXICON_TEXT_PREP)))
    inputs = stack_inputs(member_probs, lexicon_scores([texts[g] for g in guids]))
    folds = stratified_folds(labels.tolist(), 2, 42)
    nested, chosen = nested_cross_fitted_probabilities(inputs, labels, folds, classes=3)  # --stack-c auto
    np.testing.assert_allclose(probs, nested, atol=2e-5)
    assert saved["stacker"]["fold_c"] == chosen
    assert saved["stacker"]["c"] == choose_c(inputs, labels, folds, classes=3)
    assert metrics["out_of_fold"]["accuracy"] == pytest.approx(float((probs.argmax(1) == labels).mean()))

    loaded = load_run_folder(ens)
    assert isinstance(loaded, LoadedEnsemble) and loaded.stacker is not None
    test = open_data(dataset, "test")
    members = [load_run_folder(run) for run in (first, second)]
    for member in members:  # the stacker was fitted on, and combines, the members' uncalibrated probabilities
        member.temperature = 1.0
    members = [member.predict_split(test, log=lambda *a: None) for member in members]
    raw = [decode_text(test.read_text_bytes(g)).text for g in test.guids]
    expected = apply_temperature(loaded.stacker.probabilities(stack_inputs(members, lexicon_scores_of_raw(raw))),
                                 loaded.temperature)  # then the ensemble's own temperature
    np.testing.assert_allclose(loaded.predict_split(test, log=lambda *a: None), expected, atol=1e-6)
    batch = loaded.predict_batch(texts=raw, images=[dataset / "data" / f"{g}.jpg" for g in test.guids])
    np.testing.assert_allclose([[p.probabilities[n] for n in LABELS] for p in batch], expected, atol=1e-4)

    predictions = tmp_path / "pred.txt"
    assert main(["predict", "--run", str(ens), "--data", str(dataset), "--out", str(predictions)]) == 0
    assert "stacked with VADER" in capsys.readouterr().out
    rows = predictions.read_text().splitlines()[1:]
    assert [r.split(",")[1] for r in rows] == [LABELS[i] for i in expected.argmax(1)]

    assert main(["report", "--out", str(tmp_path / "report"), str(ens)]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    stacked_accuracy = f"{metrics['cv']['accuracy_mean']:.4f}"
    assert any("(stacked, cross-fitted)" in line and stacked_accuracy in line for line in report.splitlines())


def test_stack_user_errors_are_one_line(two_runs, dataset, tmp_path, capsys):
    first, second = two_runs
    runs = [str(first), str(second)]
    other = write_dataset(tmp_path / "other", seed=1)  # other posts: not what the runs were trained on
    for args, message in ((["--stack"], "give --data"), (["--data", str(dataset)], "only read with --stack"),
                          (["--stack", "--data", str(dataset), "--stack-c", "0"], "must be a positive number or 'auto'"),
                          (["--stack", "--data", str(dataset), "--stack-c", "strong"], "got strong"),
                          (["--stack", "--data", str(other)], "not the data the members were trained on")):
        capsys.readouterr()
        assert main(["ensemble", "--out", str(tmp_path / "ens"), *args, *runs]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
