"""mmsent: image+text sentiment classification (positive / neutral / negative)."""

from ._version import __version__

__all__ = ["__version__", "load_plugins", "load_run"]


def load_plugins() -> None:
    """Import the modules that register encoders, fusions, losses and model families."""
    from . import fusion, losses, model, profiles  # noqa: F401
    from .encoders import image, text  # noqa: F401


def load_run(run_dir, device: str = "auto", backend: str | None = None):
    """Load a trained run or ensemble folder for prediction (see :func:`mmsent.predict.load_run`).

    ``device``: "auto", "cpu", "cuda" or "cuda:N"; ``backend``: what runs the frozen encoders (None = the run's own).
    """
    load_plugins()
    from .predict import load_run as _load_run

    return _load_run(run_dir, device=device, backend=backend)
