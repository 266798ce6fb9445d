"""`mmsent predict --data BIG.csv --out OUT.csv` on generated tables of several sizes: rows/s and the peak memory
(RSS) of the command's process, which stays flat as the table grows (the table is read and written in chunks).

The run is trained here on a generated labelled table (600 short texts, 2 folds): the real MiniLM text encoder,
text only (`--modality text --profile fast`). The tables to predict hold short generated texts (4-9 words) and no
image column. A fresh feature cache (a temp folder) is used; predicting a table does not use it.

    python benchmarks/bench_predict_table.py [--sizes 20000,100000] [--chunk-size 1000] [--keep DIR]

The figures also go to a JSON record (``record.py``): ``--json`` (default: bench_predict_table.json).
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from record import Recorder, add_json_option

WORDS = {"positive": ["love", "great", "happy", "beautiful", "win", "amazing"],
         "neutral": ["today", "meeting", "report", "street", "photo", "train"],
         "negative": ["hate", "awful", "sad", "terrible", "lost", "broken"]}
FILLER = ["the", "a", "my", "this", "city", "coffee", "morning", "with", "friends", "at", "home", "again"]


def write_table(path: Path, rows: int, labelled: bool, seed: int) -> Path:
    """``rows`` posts (id, text[, label]) of 4-9 words: a class word or two among filler words."""
    rng = random.Random(seed)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"] + (["label"] if labelled else []))
        for i in range(rows):
            label = rng.choice(list(WORDS))
            words = rng.choices(FILLER, k=rng.randint(3, 7)) + rng.choices(WORDS[label], k=rng.randint(1, 2))
            rng.shuffle(words)
            writer.writerow([f"p{i}", " ".join(words)] + ([label] if labelled else []))
    return path


def mmsent(*args: str) -> tuple[float, int]:
    """Run ``mmsent ARGS`` in a child process: (wall seconds, its own peak RSS in MiB)."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "mmsent", *args], stdout=subprocess.PIPE, text=True)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"mmsent {args[0]} failed:\n{output}")
    print("\n".join("  " + line for line in output.strip().splitlines()[-2:]))
    return seconds, usage.ru_maxrss // 1024  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="20000,100000", help="rows of each table to predict")
    parser.add_argument("--chunk-size", default="1000")
    parser.add_argument("--keep", type=Path, help="folder to keep the tables, the run and the outputs in")
    add_json_option(parser, "bench_predict_table.json")
    args = parser.parse_args()
    recorder = Recorder("predict_table")
    figures = {"chunk_size": int(args.chunk_size), "sizes": {}}
    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench_predict_table_"))
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["MMSENT_CACHE_DIR"] = str(folder / "cache")
    os.environ["TQDM_DISABLE"] = "1"
    run = folder / "run"
    if not (run / "metrics.json").exists():
        train = write_table(folder / "train.csv", 600, labelled=True, seed=1)
        seconds, _ = mmsent("train", "--data", str(train), "--out", str(run), "--overwrite", "--profile", "fast",
                            "--modality", "text", "--folds", "2", "--epochs", "5")
        print(f"train: {seconds:.1f} s")
        figures["train_seconds"] = seconds
    for size in map(int, args.sizes.split(",")):
        table = write_table(folder / f"table_{size}.csv", size, labelled=False, seed=size)
        out = folder / f"predictions_{size}.csv"
        seconds, peak = mmsent("predict", "--data", str(table), "--run", str(run), "--out", str(out),
                               "--overwrite", "--chunk-size", args.chunk_size)
        with open(out, newline="") as handle:
            written = sum(1 for _ in csv.reader(handle)) - 1
        assert written == size, f"{out} holds {written} rows, not {size}"
        print(f"{size} rows: {seconds:.1f} s wall for the command = {size / seconds:.0f} rows/s; peak RSS {peak} MiB")
        figures["sizes"][str(size)] = {"seconds": seconds, "rows_per_second": size / seconds, "peak_rss_mib": peak}
    recorder.write(args.json, figures)


if __name__ == "__main__":
    main()
