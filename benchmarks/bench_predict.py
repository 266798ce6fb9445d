"""Where the wall time of `mmsent predict` goes: a trained run predicts the 511 test posts of the real data with the
test features cold (the encoders' graph exports and unpacked models stay cached, as after `mmsent train`).

Each round, in fresh processes: one that times the phases (imports, loading the run, hashing the data for the
cache key, text features, image features, the fold ensemble), then the `mmsent predict` command itself.

    python benchmarks/bench_predict.py --run RUN --data ../shared/data/mvsa [--backend onnx] [--rounds 2]
    python benchmarks/bench_predict.py --run RUN --export MODEL --data ../shared/data/mvsa [--rounds 3]

With ``--export MODEL`` (``mmsent export --run RUN --out MODEL``) each round runs the cold ``mmsent predict`` command
from the run, then from the export, back to back, and compares their wall times and their predictions.

The figures of every round also go to a JSON record (``record.py``): ``--json`` (default: bench_predict.json).
"""

from __future__ import annotations

import time

START = time.perf_counter()  # the imports below are part of what is timed

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from record import Recorder, add_json_option  # noqa: E402

KEPT = ("onnx", "models")  # cache folders that a trained run leaves warm: graph exports, unpacked models


def time_phases(run: Path, data: Path, backend: str | None) -> dict[str, float]:
    """Seconds per phase of one prediction, in this (fresh) process."""
    from mmsent.data.dataset import open_data
    from mmsent.features import load_or_compute
    from mmsent.predict import LoadedRun, load_run_folder

    seconds = {"imports": time.perf_counter() - START}
    mark = time.perf_counter()
    predictor = load_run_folder(run, backend=backend)
    if not isinstance(predictor, LoadedRun):
        sys.exit(f"{run} is an ensemble: time one of its member runs")
    seconds["load run"] = time.perf_counter() - mark
    split = open_data(data, "test")
    config = predictor.config

    def work():  # on the run's inference thread, as mmsent predict does (features.compute_features, one tower at a time)
        mark = time.perf_counter()
        fingerprint = split.fingerprint()  # the feature cache's key: reads every file once
        seconds["fingerprint"] = time.perf_counter() - mark
        mark = time.perf_counter()
        features = {}
        for tower in predictor.towers.present():
            features.update(load_or_compute(tower, split, config.text_prep, tower.precompute_batch_size,
                                            config.train.workers, log=lambda *_: None, fingerprint=fingerprint))
            seconds[f"{tower.kind} features"] = time.perf_counter() - mark
            mark = time.perf_counter()
        predictor._ensemble(features, len(split.records))
        seconds[f"{len(predictor.models)}-fold ensemble"] = time.perf_counter() - mark

    predictor._call(work)
    seconds["total"] = time.perf_counter() - START
    return seconds


def cold_cache() -> str:
    """A new cache folder that shares only the graph exports and unpacked models of the current one."""
    from mmsent.paths import cache_dir

    folder = tempfile.mkdtemp(prefix="mmsent-bench-predict-")
    for name in KEPT:
        if (cache_dir() / name).is_dir():
            os.symlink(cache_dir() / name, Path(folder) / name)
    return folder


def cold_predict(run: Path, data: Path, cache: str) -> tuple[float, list[str]]:
    """Wall seconds of ``mmsent predict --run RUN --data DATA`` in a fresh process, and its rows."""
    out = Path(cache) / "predictions.txt"
    mark = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mmsent", "predict", "--run", str(run), "--data", str(data), "--out",
                    str(out)], check=True, capture_output=True, env=dict(os.environ, MMSENT_CACHE_DIR=cache))
    return time.perf_counter() - mark, out.read_text().splitlines()


def compare_export(run: Path, model: Path, data: Path, rounds: int) -> list[dict]:
    """Cold predict from the run and from its export, back to back, ``rounds`` times: each round's figures."""
    figures = []
    for round_ in range(1, rounds + 1):
        caches = [cold_cache(), cold_cache()]
        try:
            run_s, run_rows = cold_predict(run, data, caches[0])
            export_s, export_rows = cold_predict(model, data, caches[1])
        finally:
            for cache in caches:
                shutil.rmtree(cache)
        same = sum(a == b for a, b in zip(run_rows[1:], export_rows[1:]))
        print(f"round {round_}: mmsent predict from the run {run_s:.1f} s, from the export {export_s:.1f} s "
              f"({export_s / run_s:.0%} of the run's); {same} of {len(run_rows) - 1} labels the same", flush=True)
        figures.append({"run_seconds": run_s, "export_seconds": export_s, "same_labels": same,
                        "rows": len(run_rows) - 1})
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", type=Path, required=True, help="a run folder written by mmsent train")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("MMSENT_DATA", "../shared/data/mvsa")))
    parser.add_argument("--backend", default=None, help="what runs the frozen encoders (default: the run's)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--export", type=Path, help="an export of --run: compare cold predict from each")
    parser.add_argument("--phases-only", action="store_true", help=argparse.SUPPRESS)  # the child process
    add_json_option(parser, "bench_predict.json")
    args = parser.parse_args()
    recorder = Recorder("predict")
    if args.export:
        recorder.write(args.json, {"export_rounds": compare_export(args.run, args.export, args.data, args.rounds)})
        return
    if args.phases_only:
        print(json.dumps(time_phases(args.run, args.data, args.backend)))
        return
    if not (args.run / "config.json").is_file() and not (args.run / "ensemble.json").is_file():
        sys.exit(f"{args.run} is not a run folder: train one with 'mmsent train' (or 'make run')")
    backend = ["--backend", args.backend] if args.backend else []
    rounds = []
    for round_ in range(1, args.rounds + 1):
        caches = [cold_cache(), cold_cache()]
        try:
            child = subprocess.run([sys.executable, __file__, "--run", str(args.run), "--data", str(args.data),
                                    "--phases-only", *backend], check=False, capture_output=True, text=True,
                                   env=dict(os.environ, MMSENT_CACHE_DIR=caches[0]))
            if child.returncode != 0:
                sys.exit(f"timing the phases failed:\n{child.stderr.strip()}")
            phases = json.loads(child.stdout.strip().splitlines()[-1])
            out = Path(caches[1]) / "predictions.txt"
            mark = time.perf_counter()
            subprocess.run([sys.executable, "-m", "mmsent", "predict", "--run", str(args.run), "--data",
                            str(args.data), "--out", str(out), *backend], check=True, capture_output=True,
                           env=dict(os.environ, MMSENT_CACHE_DIR=caches[1]))
            wall = time.perf_counter() - mark
            rows = len(out.read_text().splitlines()) - 1
        finally:
            for cache in caches:
                shutil.rmtree(cache)  # the links to the kept folders go, not what they point to
        print(f"round {round_}: " + ", ".join(f"{name} {value:.2f} s" for name, value in phases.items()))
        print(f"round {round_}: mmsent predict {wall:.1f} s wall, {rows} rows")
        rounds.append({"phase_seconds": phases, "predict_seconds": wall, "rows": rows})
    recorder.write(args.json, {"backend": args.backend, "rounds": rounds})

if __name__ == "__main__":
    main()
