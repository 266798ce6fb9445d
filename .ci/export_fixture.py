"""For .ci/base_install.sh: train a tiny run on generated data, export it and predict its test posts (in the full
environment); or, with --compare, check that two prediction tables agree to 1e-4."""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-4
FAST = ["--epochs", "1", "--folds", "2", "--batch-size", "8", "--dim", "16", "--ffn-dim", "32",
        "--set", "text.max_length=16", "--set", "image.image_size=64", "--workers", "0"]


def build(work: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import write_dataset
    from mmsent.cli import main

    data = write_dataset(work / "data")
    for argv in (["train", "--data", str(data), "--out", str(work / "run"), *FAST],
                 ["export", "--run", str(work / "run"), "--out", str(work / "model")],
                 ["predict", "--run", str(work / "run"), "--data", str(data), "--out", str(work / "run.csv")]):
        if main(argv) != 0:
            sys.exit(f"mmsent {argv[0]} failed")


def compare(expected: Path, got: Path) -> None:
    rows = [list(csv.reader(path.open())) for path in (expected, got)]
    if rows[0][0] != rows[1][0] or len(rows[0]) != len(rows[1]):
        sys.exit(f"{got} does not have the rows and columns of {expected}")
    gap = 0.0
    for a, b in zip(rows[0][1:], rows[1][1:]):
        if a[:2] != b[:2]:
            sys.exit(f"{got}: post {b[0]} is {b[1]}, the run says {a[1]}")
        gap = max([gap] + [abs(float(x) - float(y)) for x, y in zip(a[2:-1], b[2:-1])])
    if gap > TOLERANCE:
        sys.exit(f"{got}: probabilities up to {gap:.1e} away from the run's")
    print(f"the base install's predictions agree with the run's: {len(rows[0]) - 1} posts, largest gap {gap:.1e}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("work", type=Path)
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("EXPECTED", "GOT"))
    args = parser.parse_args()
    compare(*args.compare) if args.compare else build(args.work)
