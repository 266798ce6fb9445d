"""Compare a data set converted by ``mmsent convert`` with its source, post by post.

    python benchmarks/compare_formats.py --data ../shared/data/mvsa --converted OUT.csv OUT.jsonl [--allow-outside-paths]

For each converted file and each part (train, test): row counts, then the mismatches of guids, labels (indices and
names), cleaned texts (``TextPrepConfig()``) and image bytes; exits 1 if any differs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmsent.config import DataConfig, TextPrepConfig
from mmsent.data.convert import read_parts
from mmsent.data.formats import PARTS


def mismatches(source, converted) -> dict[str, int]:
    """Per compared field, how many positions differ (a length difference counts as mismatches too)."""
    n = max(len(source.records), len(converted.records))
    pairs = {
        "guids": (source.guids, converted.guids),
        "labels": (source.labels, converted.labels),
        "label_names": ([source.label_names], [converted.label_names]),
        "texts": (source.texts(TextPrepConfig()), converted.texts(TextPrepConfig())),
        "image_bytes": ([source.read_image_bytes(g) for g in source.guids],
                        [converted.read_image_bytes(g) for g in converted.guids]),
    }
    return {name: sum(a != b for a, b in zip(left, right)) + abs(len(left) - len(right)) if name != "label_names"
            else int(left != right) for name, (left, right) in pairs.items()} | {"rows_compared": n}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--converted", type=Path, nargs="+", required=True)
    parser.add_argument("--allow-outside-paths", action="store_true")
    args = parser.parse_args()
    sources = read_parts(args.data, DataConfig())
    failed = False
    for path in args.converted:
        converted = read_parts(path, DataConfig(allow_outside_paths=args.allow_outside_paths))
        for part, source, other in zip(PARTS, sources, converted):
            found = mismatches(source, other)
            failed |= any(v for k, v in found.items() if k != "rows_compared")
            print(f"{path.name} {part}: rows {len(source.records)} (source) vs {len(other.records)} (converted); "
                  f"mismatches: " + ", ".join(f"{k} {v}" for k, v in found.items() if k != "rows_compared"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
