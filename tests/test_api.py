"""Training from Python: ``mmsent.train`` and its typed result, and ``SentimentClassifier`` (scikit-learn's
estimator contract), which train through the same function as ``mmsent train`` and predict as ``load_run`` does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

import mmsent
from helpers import generated_posts, write_dataset
from mmsent.api import SeedsResult, TrainResult
from mmsent.cli import main
from mmsent.config import ConfigError
from mmsent.data.dataset import posts_split
from mmsent.data.posts import DataError
from mmsent.data.text import decode_text
from mmsent.errors import InputError

# small and fast: pooled frozen features (--profile fast), two folds, a small head (an epoch takes milliseconds)
SETTINGS = {"train.batch_size": 8, "train.workers": 0, "fusion.dim": 64, "fusion.ffn_dim": 64,
            "text.max_length": 16, "image.image_size": 64}
FOLDS, EPOCHS = 2, 20
FIGURES = ("cv", "folds", "out_of_fold", "calibration", "protocol")  # what a run's posts and seed decide


def estimator(**params) -> mmsent.SentimentClassifier:
    return mmsent.SentimentClassifier("fast", folds=FOLDS, epochs=EPOCHS, overrides=dict(SETTINGS), **params)


def cli_settings() -> list[str]:
    """The same settings as ``mmsent train`` flags."""
    sets = [f"--set={key}={value}" for key, value in SETTINGS.items()]
    return ["--profile", "fast", "--folds", str(FOLDS), "--epochs", str(EPOCHS), *sets]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("api") / "DIR", n_train=30, n_test=6)


def folder_posts(dataset: Path) -> tuple[list[str], list[str], list[str]]:
    """The labelled posts of a lab folder as lists, in train.txt's order: texts decoded as the folder reader
    decodes them, image paths, label names."""
    rows = [line.split(",") for line in (dataset / "train.txt").read_text().splitlines()[1:] if line]
    texts = [decode_text((dataset / "data" / f"{guid}.txt").read_bytes()).text for guid, _ in rows]
    return texts, [str(dataset / "data" / f"{guid}.jpg") for guid, _ in rows], [label for _, label in rows]


@pytest.fixture(scope="module")
def fitted(dataset, tmp_path_factory) -> mmsent.SentimentClassifier:
    """An estimator fitted on the folder's posts given as lists."""
    return estimator(out_dir=tmp_path_factory.mktemp("fitted") / "run").fit(*folder_posts(dataset))


def figures_of(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    return {key: metrics[key] for key in FIGURES}


def test_a_clone_fits_the_same_figures_as_mmsent_train(dataset, fitted, tmp_path):
    assert main(["train", "--data", str(dataset), "--out", str(tmp_path / "cli"), *cli_settings()]) == 0
    expected = figures_of(tmp_path / "cli")
    assert figures_of(fitted.run_dir_) == expected  # posts given as lists: the folder's posts, in its order
    twin = clone(fitted)
    assert twin.get_params() == fitted.get_params() and not hasattr(twin, "classes_")
    twin.set_params(out_dir=tmp_path / "clone")
    twin.fit(dataset)  # the data set itself
    assert figures_of(tmp_path / "clone") == expected
    assert json.loads((tmp_path / "clone" / "config.json").read_text()) == json.loads(
        (tmp_path / "cli" / "config.json").read_text())


def test_predict_proba_columns_are_classes_and_the_task_is_learned(fitted, tmp_path):
    texts, images, labels = folder_posts(write_dataset(tmp_path / "unseen", n_train=24, n_test=0, seed=7))
    probs = fitted.predict_proba(texts, images)
    assert list(fitted.classes_) == ["negative", "neutral", "positive"]
    assert probs.shape == (24, 3)
    with mmsent.load_run(fitted.run_dir_) as run:  # the column of each class is that class's probability
        predictions = run.predict_batch(texts, images)
    for row, prediction in zip(probs, predictions):
        assert row == pytest.approx([prediction.probabilities[name] for name in fitted.classes_], abs=1e-5)
    predicted = fitted.predict(texts, images)
    assert list(predicted) == [prediction.label for prediction in predictions]
    assert np.mean(predicted == np.array(labels)) >= 0.8  # chance is 1/3
    assert fitted.score(texts, images, labels) == np.mean(predicted == np.array(labels))


def test_save_and_load_give_the_same_probabilities_and_a_run_folder(fitted, tmp_path, capsys):
    texts, images, _ = generated_posts(6, seed=8)
    saved = fitted.save(tmp_path / "model")
    loaded = mmsent.SentimentClassifier.load(saved)
    assert np.array_equal(loaded.predict_proba(texts, images), fitted.predict_proba(texts, images))
    assert list(loaded.classes_) == list(fitted.classes_)
    assert loaded.get_params() == {**fitted.get_params(), "out_dir": None}  # clone(loaded) trains the same
    with pytest.raises(InputError, match="exists"):
        fitted.save(saved)
    images[0].save(tmp_path / "post.jpg")
    capsys.readouterr()
    assert main(["predict", "--run", str(saved), "--text", texts[0], "--image", str(tmp_path / "post.jpg")]) == 0
    assert capsys.readouterr().out.split()[0] == fitted.predict(texts[:1], [str(tmp_path / "post.jpg")])[0]
    config = json.loads((saved / "config.json").read_text())  # as a run saved before runs recorded their labels
    config["data"].pop("labels", None)
    (saved / "config.json").write_text(json.dumps(config))
    older = mmsent.SentimentClassifier.load(saved)
    assert list(older.classes_) == ["negative", "neutral", "positive"]
    assert older.result_.classes == ("negative", "neutral", "positive")
    assert older.predict(texts[:2], images[:2]).tolist() == fitted.predict(texts[:2], images[:2]).tolist()


def test_fit_without_a_folder_trains_in_a_temporary_one_removed_with_the_estimator():
    texts, images, labels = generated_posts(12)
    model = mmsent.SentimentClassifier("fast", folds=2, epochs=1, overrides=dict(SETTINGS)).fit(texts, images,
                                                                                                 labels)
    run_dir = model.run_dir_
    assert (run_dir / "metrics.json").is_file() and model.predict_proba(texts[:2], images[:2]).shape == (2, 3)
    del model
    import gc

    gc.collect()
    assert not run_dir.exists()


def test_train_returns_the_figures_of_its_run_folder(dataset, tmp_path):
    lines = []
    result = mmsent.train(dataset, tmp_path / "run", "fast", overrides=SETTINGS, log=lines.append,
                          **{"train.folds": FOLDS, "train.epochs": EPOCHS})
    assert isinstance(result, TrainResult)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert result.figures == metrics["cv"] and result.out_of_fold == metrics["out_of_fold"]
    assert result.protocol == metrics["protocol"] and result.protocol["name"] == "cv_inner_selection"
    assert result.temperature == metrics["calibration"]["temperature"] != 1.0
    assert result.classes == ("negative", "neutral", "positive")
    assert result.run_dir == tmp_path / "run" and result.files.metrics == tmp_path / "run" / "metrics.json"
    assert [path.name for path in result.files.folds] == ["fold_0", "fold_1"]
    assert result.files.config.is_file() and result.files.out_of_fold.is_file()
    assert lines[0].startswith("training pretrained / concat / modality all on 30 posts, 2 folds -> ")
    assert result.summary().splitlines()[0].startswith("2-fold CV: accuracy ")


def test_train_over_seeds_returns_each_seeds_run(dataset, tmp_path):
    result = mmsent.train(dataset, tmp_path / "seeds", "fast", seeds=[1, 2], log=lambda line: None,
                          overrides={**SETTINGS, "train.folds": 2, "train.epochs": 1})
    assert isinstance(result, SeedsResult) and list(result.runs) == [1, 2]
    assert result.runs[2].figures == json.loads((tmp_path / "seeds" / "seed_2" / "metrics.json").read_text())["cv"]
    assert result.over_seeds["seeds"] == 2
    with pytest.raises(ValueError, match="exclude each other"):
        mmsent.train(dataset, tmp_path / "other", seeds="1,2", **{"train.seed": 3})


def test_bad_input_gets_a_clear_error(tmp_path):
    texts, images, labels = generated_posts(6)
    with pytest.raises(NotFittedError):
        mmsent.SentimentClassifier().predict(texts, images)
    with pytest.raises(InputError, match="6 texts, 5 images, 6 labels"):
        mmsent.SentimentClassifier().fit(texts, images[:5], labels)
    with pytest.raises(DataError, match="at least two classes"):
        mmsent.SentimentClassifier().fit(texts, images, ["positive"] * 6)
    with pytest.raises(InputError, match="needs the posts' labels"):
        mmsent.SentimentClassifier().fit(texts, images)
    with pytest.raises(InputError, match="a list with one value per post"):
        mmsent.SentimentClassifier().fit("one text", None, ["positive"])
    with pytest.raises(InputError, match="an image is a path, bytes, a PIL image or None"):
        mmsent.SentimentClassifier().fit(texts, [1] * 6, labels)
    with pytest.raises(ConfigError, match="lab folder"):
        mmsent.train(posts_split(texts, images, labels), tmp_path / "run", val_file=tmp_path / "val.txt")


def test_importing_the_api_imports_no_torch():
    code = ("import sys, mmsent; mmsent.train, mmsent.TrainResult, mmsent.SentimentClassifier; "
            "assert not [m for m in sys.modules if m.split('.')[0] == 'torch'], 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
