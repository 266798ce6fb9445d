"""scikit-learn's estimator contract over mmsent: :class:`SentimentClassifier`.

``fit`` trains through :func:`mmsent.api.train` (what ``mmsent train`` runs) into an ordinary run folder, and
``predict_proba`` predicts with the run loaded as :func:`mmsent.load_run` loads it. Imports no PyTorch until it
trains or predicts.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import weakref
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from .atomic import atomic_write_json
from .config import run_labels
from .data.dataset import Split, posts_split
from .errors import InputError

__all__ = ["ESTIMATOR_FILE", "SentimentClassifier"]

ESTIMATOR_FILE = "estimator.json"  # the estimator's parameters, beside the run it trained


class SentimentClassifier(ClassifierMixin, BaseEstimator):
    """Image+text sentiment classifier with scikit-learn's estimator interface.

    ``profile``: a named preset (``mmsent config`` lists them); ``folds``, ``epochs``, ``seed``: ``train.folds``,
    ``train.epochs``, ``train.seed`` (None: the profile's or the default); ``overrides``: any other dotted config
    keys (``{"fusion.heads": 8}``), under the three named ones. ``out_dir``: the run folder ``fit`` writes (None: a
    temporary folder, removed with the estimator: ``save`` keeps it); ``device``: "auto", "cpu", "cuda" or "cuda:N",
    for training and prediction; ``verbose``: print training's progress lines.

    ``fit(texts, images, labels)`` takes lists (a text is a string or None; an image a path, bytes, a PIL image or
    None; either list may be None), ``fit(data)`` a data set (a lab folder or a table file, as ``mmsent train
    --data``). After ``fit``: ``classes_`` (the label names, in the columns' order of ``predict_proba``),
    ``run_dir_`` and ``result_`` (a :class:`mmsent.api.TrainResult`).
    """

    def __init__(self, profile: str | None = None, *, folds: int | None = None, epochs: int | None = None,
                 seed: int | None = None, overrides: Mapping[str, Any] | None = None,
                 out_dir: str | Path | None = None, device: str | None = None, verbose: bool = False):
        self.profile = profile
        self.folds = folds
        self.epochs = epochs
        self.seed = seed
        self.overrides = overrides
        self.out_dir = out_dir
        self.device = device
        self.verbose = verbose

    # ---- training

    def config_overrides(self) -> dict[str, Any]:
        """The dotted config keys this estimator sets over its profile: ``overrides``, then the named parameters."""
        merged = dict(self.overrides or {})
        named = {"train.folds": self.folds, "train.epochs": self.epochs, "train.seed": self.seed,
                 "train.device": self.device}
        merged.update({key: value for key, value in named.items() if value is not None})
        return merged

    def fit(self, texts=None, images=None, labels=None) -> "SentimentClassifier":
        """Train on posts in memory (``texts``, ``images``, ``labels``: lists of one length) or on a data set
        (``fit(data)``: a folder or a table path); replaces what an earlier ``fit`` trained."""
        from .api import train
        from .progress import silenced

        data = self._training_data(texts, images, labels)
        self._release()
        out = self._run_folder()
        log = print if self.verbose else _silent
        with nullcontext() if self.verbose else silenced():
            result = train(data, out, self.profile, overrides=self.config_overrides(), overwrite=True, log=log)
        atomic_write_json(out / ESTIMATOR_FILE, _saved_params(self))
        self.result_ = result
        self.run_dir_ = result.run_dir
        self.classes_ = np.array(result.classes, dtype=object)
        return self

    def _training_data(self, texts, images, labels) -> Split | Path:
        if isinstance(texts, (str, os.PathLike)) and images is None and labels is None:
            return Path(texts)
        if labels is None:
            raise InputError("fit needs the posts' labels: fit(texts, images, labels), or fit(data) with a data set "
                             "(a folder or a table file)")
        return posts_split(_as_list(texts, "texts"), _as_list(images, "images"), _as_list(labels, "labels"))

    def _run_folder(self) -> Path:
        if self.out_dir is not None:
            return Path(self.out_dir)
        workdir = tempfile.mkdtemp(prefix="mmsent-run-")
        self._cleanup = weakref.finalize(self, shutil.rmtree, workdir, True)
        return Path(workdir) / "run"

    # ---- prediction

    def predict_proba(self, texts=None, images=None) -> np.ndarray:
        """Class probabilities (N, C) of posts in memory, columns in ``classes_`` order (calibrated as the run is)."""
        check_is_fitted(self)
        split = posts_split(_as_list(texts, "texts"), _as_list(images, "images"))
        from .progress import silenced

        with silenced():
            probs = self._predictor().predict_split(split, log=_silent, cache=False)
        return np.asarray(probs, dtype=np.float64)

    def predict(self, texts=None, images=None) -> np.ndarray:
        """Labels (N,) of posts in memory, by the run's decision rule (as ``mmsent predict`` labels them)."""
        probs = self.predict_proba(texts, images)
        return self.classes_[self._predictor().labels_of(probs)]

    def score(self, texts=None, images=None, labels=None) -> float:
        """Accuracy of ``predict`` against ``labels``."""
        if labels is None:
            raise InputError("score needs the posts' labels: score(texts, images, labels)")
        return float(np.mean(self.predict(texts, images) == np.asarray(_as_list(labels, "labels"), dtype=object)))

    def _predictor(self):
        if getattr(self, "_run", None) is None:
            from . import load_run

            self._run = load_run(self.run_dir_, device=self.device or "auto")
        return self._run

    # ---- saving

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Copy the trained run folder to ``path`` (``mmsent predict --run PATH`` and ``load`` take it)."""
        check_is_fitted(self)
        path = Path(path)
        if path.exists():
            if not overwrite:
                raise InputError(f"{path} exists: save to another path, or pass overwrite=True to replace it")
            shutil.rmtree(path)
        shutil.copytree(self.run_dir_, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "SentimentClassifier":
        """A fitted estimator from a run folder (written by ``save``, ``fit(out_dir=...)`` or ``mmsent train``)."""
        from .api import TrainResult
        from .runfolder import read_json, read_metrics, read_run_config

        path = Path(path)
        config = read_run_config(path)  # refuses what is not a run folder
        saved = path / ESTIMATOR_FILE
        estimator = cls(**read_json(saved, "an estimator's parameters")) if saved.is_file() else cls()
        estimator.run_dir_ = path
        estimator.classes_ = np.array(run_labels(config), dtype=object)
        estimator.result_ = TrainResult.from_metrics(path, read_metrics(path))
        return estimator

    def _release(self) -> None:
        """Close the loaded run and remove the temporary run folder of an earlier ``fit``."""
        run, self._run = getattr(self, "_run", None), None
        if run is not None:
            run.close()
        cleanup = getattr(self, "_cleanup", None)
        if cleanup is not None:
            cleanup()

    def __getstate__(self) -> dict:
        """Pickled or copied without the loaded run (reloaded on the next prediction) and the temporary folder's
        owner (the original estimator keeps it: ``save`` a run that must outlive it)."""
        return {key: value for key, value in super().__getstate__().items() if key not in ("_run", "_cleanup")}


def _silent(*_args, **_kwargs) -> None:
    pass


def _as_list(values, name: str) -> list | None:
    """A list of posts' values (None stays None); a single string or path is refused (give a list)."""
    if values is None:
        return None
    if isinstance(values, (str, bytes, os.PathLike)):
        raise InputError(f"{name} is a list with one value per post, not a single {type(values).__name__}")
    return list(values)


def _saved_params(estimator: SentimentClassifier) -> dict[str, Any]:
    """The parameters a loaded estimator gets back (the run folder's own location is not one of them)."""
    params = estimator.get_params()
    params.pop("out_dir")
    return json.loads(json.dumps(params, default=str))
