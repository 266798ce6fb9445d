"""Accuracy levers, each measured the same way: k-fold CV over several seeds, and the test part of a fixed
stratified 8:1:1 split of the training file (one model per seed, its epoch chosen on the validation part).

Every lever is a set of training flags over a common base (``--base``, e.g. ``--profile fast``). For each lever
the script runs, through the installed ``mmsent`` command:

    mmsent train    --data DIR --out OUT/<lever>/cv --seeds 1,2,3 <base> <lever flags>
    mmsent train    --data DIR --train-file SPLIT/train.txt --val-file SPLIT/val.txt --seed S ... (per seed)
    mmsent evaluate --run OUT/<lever>/fixed/seed_S --data DIR --labels-file SPLIT/test.txt

and the decision rule for macro F1 (``mmsent decide``'s cross-fitted figures on each CV run's out-of-fold
probabilities, no retraining), and seed averaging: ``mmsent ensemble`` of the seed runs (their out-of-fold
probabilities averaged) and the mean of the seed models' probabilities on the fixed split's test posts. Finished runs are kept, so the script resumes. It writes the record
OUT/levers.json (``record.py``: the figures, the git revision, the package versions, the machine, the load average,
the command, the date; ``--json PATH`` writes a copy there too) and OUT/levers.md (the table).

    python benchmarks/bench_levers.py --data DIR --out OUT [--levers base,pad,ocr] [--base "--profile fast"]
    python benchmarks/bench_levers.py render OUT [OUT2 ...]     # the tables of finished outputs, merged
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from record import Recorder, add_json_option
from render import levers_table, mean_std, read_record, render_levers

LEVERS = {  # name -> training flags over the base
    "base": [],
    "pad": ["--set", "image.fit=pad"],
    "ocr": ["--ocr"],
    "pad+ocr": ["--set", "image.fit=pad", "--ocr"],
    "ema": ["--set", "train.ema_decay=0.99"],
    "lexicon": ["--set", "lexicon.enabled=true"],
    "ocr+lexicon": ["--ocr", "--set", "lexicon.enabled=true"],
    "pad+ocr+lexicon": ["--set", "image.fit=pad", "--ocr", "--set", "lexicon.enabled=true"],
    "supcon": ["--set", "train.supcon_weight=0.1"],
    "supcon-strong": ["--set", "train.supcon_weight=0.5"],
    "supcon+lexicon": ["--set", "train.supcon_weight=0.1", "--set", "lexicon.enabled=true"],
}
FIGURES = ("accuracy", "weighted_f1", "macro_f1")


def mmsent(*args: str, log: Path) -> float:
    """Run the mmsent command; returns its wall time. Its output goes to ``log``."""
    command = [str(Path(sys.executable).parent / "mmsent"), *args]
    start = time.perf_counter()
    with open(log, "a", encoding="utf-8") as out:
        out.write(f"$ {shlex.join(command)}\n")
        out.flush()
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {shlex.join(command)}; see {log}")
    return time.perf_counter() - start


def cv_figures(folder: Path, seeds: list[int], data: str, flags: list[str], log: Path) -> dict:
    seeds_file = folder / "seeds.json"
    seconds = None
    if not seeds_file.is_file():
        seconds = mmsent("train", "--data", data, "--out", str(folder), "--seeds", ",".join(map(str, seeds)),
                         "--overwrite", *flags, log=log)
    over = json.loads(seeds_file.read_text())["over_seeds"]
    figures = {key: [over[f"{key}_mean"], over[f"{key}_seed_std"]] for key in FIGURES}
    decided = []
    for seed in seeds:
        run = folder / f"seed_{seed}"
        decision_file = run / "decision.json"
        if not decision_file.is_file():
            mmsent("decide", "--run", str(run), "--rule", "macro_f1", log=log)
        decided.append(json.loads(decision_file.read_text())["cross_fitted"])
    figures["decision_macro_f1"] = {key: [float(np.mean([d[key] for d in decided])),
                                          float(np.std([d[key] for d in decided]))] for key in FIGURES}
    averaged = folder / "average"  # the seed runs averaged (mmsent train --seeds writes it; older outputs: here)
    if len(seeds) > 1 and not (averaged / "metrics.json").is_file():
        mmsent("ensemble", "--out", str(averaged), *[str(folder / f"seed_{seed}") for seed in seeds], log=log)
    if len(seeds) > 1:
        out_of_fold = json.loads((averaged / "metrics.json").read_text())["out_of_fold"]
        figures["seed_average"] = {key: float(out_of_fold[key]) for key in FIGURES}
    wall = [json.loads((folder / f"seed_{s}" / "metrics.json").read_text())["wall_seconds"] for s in seeds]
    figures["train_seconds_per_seed"] = float(np.mean(wall))
    return figures


def fixed_figures(folder: Path, split: Path, seeds: list[int], data: str, flags: list[str], log: Path) -> dict:
    rows = []
    for seed in seeds:
        run = folder / f"seed_{seed}"
        result = run / "evaluations" / "test.json"
        if not result.is_file():
            mmsent("train", "--data", data, "--train-file", str(split / "train.txt"), "--val-file",
                   str(split / "val.txt"), "--out", str(run), "--seed", str(seed), "--overwrite", *flags, log=log)
            mmsent("evaluate", "--run", str(run), "--data", data, "--labels-file", str(split / "test.txt"), log=log)
        rows.append(json.loads(result.read_text()))
    figures = {key: [float(np.mean([r[key] for r in rows])), float(np.std([r[key] for r in rows]))]
               for key in FIGURES}
    figures["seed_average"] = seed_average(folder, split, seeds, data)
    return figures


def seed_average(folder: Path, split: Path, seeds: list[int], data: str) -> dict:
    """The fixed split's test figures of the seed models' averaged probabilities (one model of several seeds;
    the CV runs cannot be averaged so, each seed drawing its own folds). Cached in FOLDER/seed_average.json."""
    cached = folder / "seed_average.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    from mmsent.data.dataset import open_data
    from mmsent.metrics import classification_metrics
    from mmsent.predict import load_run_folder
    from mmsent.runfolder import read_run_config

    config = read_run_config(folder / f"seed_{seeds[0]}")
    posts = open_data(Path(data), "train", config.data, train_file=split / "test.txt")
    probabilities = []
    for seed in seeds:
        with load_run_folder(folder / f"seed_{seed}", device="cpu") as run:
            probabilities.append(run.predict_split(posts, lambda *a, **k: None))  # (N, C)
            classes = list(run.classes)
    mean = np.mean(probabilities, axis=0)  # (N, C)
    scores = classification_metrics(np.asarray(posts.labels), mean.argmax(1), classes)
    figures = {key: float(scores[key]) for key in FIGURES}
    cached.write_text(json.dumps(figures, indent=2))
    return figures


def render(folders: list[Path]) -> str:
    """One Markdown table per base from the levers.json of several output folders (their rows in the given order)."""
    return render_levers([read_record(folder / "levers.json") for folder in folders])


def main(argv=None) -> None:
    if argv is None and sys.argv[1:2] == ["render"]:  # bench_levers.py render OUT1 OUT2 ...: the tables only
        print(render([Path(p) for p in sys.argv[2:]]), end="")
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/mvsa")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--levers", default="base,pad,ocr", help=f"comma-separated, of: {', '.join(LEVERS)}")
    parser.add_argument("--base", default="", help="flags every lever shares, e.g. '--profile fast'")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--no-fixed-split", action="store_true", help="CV only")
    add_json_option(parser)
    args = parser.parse_args(argv)
    recorder = Recorder("levers", None if argv is None else [sys.argv[0], *argv])
    names = [n for n in args.levers.split(",") if n]
    unknown = [n for n in names if n not in LEVERS]
    if unknown:
        parser.error(f"unknown levers {unknown}; known: {', '.join(LEVERS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "log.txt"
    split = args.out / "split"
    if not (split / "test.txt").is_file():
        mmsent("split", "--data", args.data, "--out", str(split), log=log)
    results_file = args.out / "levers.json"
    results = read_record(results_file)["figures"]["levers"] if results_file.is_file() else {}
    for name in names:
        flags = shlex.split(args.base) + LEVERS[name]
        cv = cv_figures(args.out / name / "cv", seeds, args.data, flags, log)
        fixed = ({key: [float("nan")] * 2 for key in FIGURES} if args.no_fixed_split else
                 fixed_figures(args.out / name / "fixed", split, seeds, args.data, flags, log))
        results[name] = {"flags": flags, "cv": cv, "fixed_split": fixed}
        figures = {"base": args.base, "seeds": seeds, "levers": results}
        recorder.write(results_file, figures)
        if args.json:
            recorder.write(args.json, figures)
        (args.out / "levers.md").write_text(levers_table(results, args.base))
        print(f"{name}: CV accuracy {mean_std(cv['accuracy'])}, macro F1 {mean_std(cv['macro_f1'])} "
              f"(decision rule {mean_std(cv['decision_macro_f1']['macro_f1'])}); fixed split accuracy "
              f"{mean_std(fixed['accuracy'])}, weighted F1 {mean_std(fixed['weighted_f1'])}, macro F1 "
              f"{mean_std(fixed['macro_f1'])}", flush=True)


if __name__ == "__main__":
    main()
