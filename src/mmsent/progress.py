"""Progress bars: every long loop draws one (tqdm), and under torchrun only process 0 draws them."""

from __future__ import annotations

import os


def progress(iterable, desc: str, unit: str, quiet: bool = False):
    """``iterable`` wrapped in a tqdm bar that disappears when done; none when ``quiet`` or on a process other than
    torchrun's 0 (elsewhere tqdm's own ``TQDM_DISABLE`` still applies)."""
    from tqdm.auto import tqdm

    silent = quiet or os.environ.get("RANK", "0") not in ("", "0")
    return tqdm(iterable, desc=desc, unit=unit, leave=False, **({"disable": True} if silent else {}))
