"""Progress bars: every long loop draws one (tqdm), and under torchrun only process 0 draws them."""

from __future__ import annotations

import os
from contextlib import contextmanager

_silenced = 0  # > 0 inside ``silenced()``, on any thread (the runs' inference threads draw bars too)


def progress(iterable, desc: str, unit: str, quiet: bool = False, total: int | None = None):
    """``iterable`` wrapped in a tqdm bar that disappears when done (None: a bar advanced with ``update(n)``, with its
    rate per ``unit``); none when ``quiet``, inside :func:`silenced` or on a process other than torchrun's 0
    (elsewhere tqdm's own ``TQDM_DISABLE`` still applies)."""
    from tqdm.auto import tqdm

    silent = quiet or _silenced > 0 or os.environ.get("RANK", "0") not in ("", "0")
    return tqdm(iterable, desc=desc, unit=unit, leave=False, total=total, **({"disable": True} if silent else {}))


@contextmanager
def silenced():
    """No bars for the loops inside (e.g. one chunk's features, under a bar of rows)."""
    global _silenced
    _silenced += 1
    try:
        yield
    finally:
        _silenced -= 1
