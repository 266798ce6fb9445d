"""Feature-extraction throughput on the real data, from a cold cache: image-text pairs per second end to end
(read, decode, resize, both frozen encoders, cache write). Prints one line per tower and the total, and writes
them as a JSON record (``record.py``) to ``--json`` (default: bench_features.json)."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from record import Recorder, add_json_option


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("MMSENT_DATA", "../shared/data/mvsa")))
    parser.add_argument("--config", type=Path, help="run config JSON (default: the default RunConfig)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config key to change, e.g. --set train.workers=2 (repeatable)")
    add_json_option(parser, "bench_features.json")
    args = parser.parse_args()
    recorder = Recorder("features")
    os.environ["MMSENT_CACHE_DIR"] = tempfile.mkdtemp(prefix="mmsent-bench-cache-")  # cold cache

    from mmsent.config import RunConfig, apply_overrides, load_config_file
    from mmsent.features import compute_features
    from mmsent.data.dataset import open_data
    from mmsent.model import load_towers
    from mmsent.training import resolve_device

    config = RunConfig()
    if args.config:
        apply_overrides(config, load_config_file(args.config))
    apply_overrides(config, dict(item.split("=", 1) for item in args.set))
    start = time.perf_counter()
    towers = load_towers(config, resolve_device(config.train.device))  # with --backend onnx: exported here
    load_seconds = time.perf_counter() - start
    split = open_data(args.data)
    start = time.perf_counter()
    compute_features(towers.present(), split, config.text_prep)
    seconds = time.perf_counter() - start
    n = len(split.records)
    print(f"encoders loaded in {load_seconds:.1f} s (backend {config.train.backend}; an ONNX export happens here)")
    changed = f", {' '.join(args.set)}" if args.set else ""
    print(f"feature extraction (cold cache, {n} pairs, text.train_layers={config.text.train_layers}{changed}): "
          f"{seconds:.1f} s = {n / seconds:.1f} pairs/s")
    recorder.write(args.json, {"settings": args.set, "backend": config.train.backend, "pairs": n,
                               "load_seconds": load_seconds, "seconds": seconds, "pairs_per_second": n / seconds})


if __name__ == "__main__":
    main()
