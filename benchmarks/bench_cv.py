"""Wall time of the default `mmsent train` (5-fold CV) on the real data from a cold cache, then `mmsent predict`
on the 511 test posts; prints the CV summary and both wall times. `--warm` then trains again on the now warm cache.
Writes the figures as a JSON record (``record.py``) to ``--json`` (default: bench_cv.json).

    python benchmarks/bench_cv.py --data ../shared/data/mvsa [--warm] [-- extra train flags, e.g. --profile fast]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from record import Recorder, add_json_option


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("MMSENT_DATA", "../shared/data/mvsa")))
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: a temp dir)")
    parser.add_argument("--warm", action="store_true", help="afterwards, train again with the cache now warm")
    parser.add_argument("extra", nargs="*", help="extra flags for mmsent train (after --)")
    add_json_option(parser, "bench_cv.json")
    args = parser.parse_args()
    recorder = Recorder("cv")
    env = dict(os.environ, MMSENT_CACHE_DIR=tempfile.mkdtemp(prefix="mmsent-bench-cache-"))  # cold cache
    run = args.out or Path(tempfile.mkdtemp(prefix="mmsent-bench-run-"))
    cli = [sys.executable, "-m", "mmsent"]
    start = time.perf_counter()
    subprocess.run([*cli, "train", "--data", str(args.data), "--out", str(run), *args.extra], env=env, check=True)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    predictions = run / "predictions.txt"
    subprocess.run([*cli, "predict", "--run", str(run), "--data", str(args.data), "--out", str(predictions)],
                   env=env, check=True)
    predict_seconds = time.perf_counter() - start
    cv = json.loads((run / "metrics.json").read_text())["cv"]
    rows = len(predictions.read_text().splitlines()) - 1
    print(f"train (cold cache): {train_seconds:.1f} s wall; CV accuracy {cv['accuracy_mean']:.4f} ± "
          f"{cv['accuracy_std']:.4f}, weighted F1 {cv['weighted_f1_mean']:.4f}, macro F1 {cv['macro_f1_mean']:.4f}")
    print(f"predict (test features cold): {predict_seconds:.1f} s wall, {rows} rows")
    figures = {"train_flags": args.extra, "train_cold_seconds": train_seconds,
               "cv": {name: value for name, value in cv.items() if isinstance(value, (int, float))},
               "predict_seconds": predict_seconds, "predict_rows": rows}
    if args.warm:
        start = time.perf_counter()
        subprocess.run([*cli, "train", "--data", str(args.data), "--out", str(run) + "-warm", "--overwrite",
                        *args.extra], env=env, check=True)
        cv = json.loads((Path(str(run) + "-warm") / "metrics.json").read_text())["cv"]
        figures["train_warm_seconds"] = time.perf_counter() - start
        print(f"train (warm cache): {figures['train_warm_seconds']:.1f} s wall; CV accuracy {cv['accuracy_mean']:.4f} "
              f"± {cv['accuracy_std']:.4f}")
    recorder.write(args.json, figures)


if __name__ == "__main__":
    main()
