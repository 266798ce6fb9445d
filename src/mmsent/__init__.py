"""mmsent: image+text sentiment classification of posts, with the label set its data carries."""

import importlib

from ._version import __version__

__all__ = ["__version__", "SentimentClassifier", "TrainResult", "load_plugins", "load_run", "train"]

# Imported on first use (importing mmsent imports no PyTorch): name -> the module defining it.
_LAZY = {"train": "mmsent.api", "TrainResult": "mmsent.api", "SeedsResult": "mmsent.api",
         "SentimentClassifier": "mmsent.estimator"}


def load_plugins() -> None:
    """Import the modules that fill every registry (:mod:`mmsent.registry`). Never needed for a look-up (each
    registry imports its own on first use); it tells early that an optional package (PyTorch) is missing."""
    from .registry import load_all

    load_all()


TRAIN_EXTRAS = "pip install 'mmsent[train]'"


def load_run(run_dir, device: str = "auto", backend: str | None = None):
    """Load a trained run or ensemble folder (see :func:`mmsent.predict.load_run_folder`), or a model folder
    written by ``mmsent export`` (see :func:`mmsent.portable.load_export`: no PyTorch needed), for prediction.

    ``device``: "auto", "cpu", "cuda" or "cuda:N"; ``backend``: what runs the frozen encoders (None = the run's own).
    """
    from .portable import is_export, load_export

    if is_export(run_dir):
        return load_export(run_dir, device=device, backend=backend)
    try:
        load_plugins()
    except ImportError as error:
        from .errors import PackageError

        raise PackageError(f"{run_dir}: predicting from a run folder needs the training extras ({error.name} is "
                           f"not installed: {TRAIN_EXTRAS}); or predict from a folder written by 'mmsent export'"
                           ) from None
    from .predict import load_run_folder

    return load_run_folder(run_dir, device=device, backend=backend)


def __getattr__(name: str):
    """``mmsent.train``, ``mmsent.TrainResult`` and ``mmsent.SentimentClassifier``, imported when first used."""
    if name in _LAZY:
        try:
            module = importlib.import_module(_LAZY[name])
        except ImportError as error:  # a base install: no scikit-learn
            from .errors import PackageError

            raise PackageError(f"mmsent.{name} needs the training extras ({error.name} is not installed): "
                               f"{TRAIN_EXTRAS}") from None
        return getattr(module, name)
    raise AttributeError(f"module 'mmsent' has no attribute {name!r}")
