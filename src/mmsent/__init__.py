"""mmsent: image+text sentiment classification of posts, with the label set its data carries."""

from ._version import __version__

__all__ = ["__version__", "load_plugins", "load_run"]


def load_plugins() -> None:
    """Import the modules that fill every registry (:mod:`mmsent.registry`). Never needed for a look-up (each
    registry imports its own on first use); it tells early that an optional package (PyTorch) is missing."""
    from .registry import load_all

    load_all()


TRAIN_EXTRAS = "pip install 'mmsent[train]'"


def load_run(run_dir, device: str = "auto", backend: str | None = None):
    """Load a trained run or ensemble folder (see :func:`mmsent.predict.load_run`), or a model folder written by
    ``mmsent export`` (see :func:`mmsent.portable.load_export`: no PyTorch needed), for prediction.

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
    from .predict import load_run as _load_run

    return _load_run(run_dir, device=device, backend=backend)
