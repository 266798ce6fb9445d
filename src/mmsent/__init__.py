"""mmsent: image+text sentiment classification (positive / neutral / negative)."""

import os as _os

__version__ = "0.1.0"

if _os.environ.get("RANK", "0") not in ("", "0"):  # under torchrun only process 0 draws progress bars
    _os.environ.setdefault("TQDM_DISABLE", "1")


def load_plugins() -> None:
    """Import the modules that register encoders, fusions, losses and model families."""
    from . import fusion, losses, model, profiles  # noqa: F401
    from .encoders import image, text  # noqa: F401


def load_run(run_dir, device: str = "auto"):
    """Load a trained run folder (see :func:`mmsent.predict.load_run`)."""
    load_plugins()
    from .predict import load_run as _load_run

    return _load_run(run_dir, device=device)
