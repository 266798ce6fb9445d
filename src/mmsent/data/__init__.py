"""Reading data sets of every registered format (formats.py) into splits of posts (dataset.py)."""

from . import formats  # noqa: F401  (registers the formats in a fixed order: folder, mvsa-*, table)
