"""The same configuration trained on several seeds: how much of a difference between runs is seed noise.

``mmsent train --seeds 1,2,3 --out RUN`` writes one complete run folder per seed and a summary::

    RUN/seed_S/      a run folder, as ``mmsent train --seed S`` writes it
    RUN/average/     the seed runs averaged: an ensemble (``mmsent ensemble``), which predicts as a run does
    RUN/seeds.json   {"seeds", "rows": [one per seed: its CV means and fold stds], "over_seeds": {...}, "protocol",
                      "average": {"run", "out_of_fold"}}
    RUN/seeds.md     the same as a Markdown table

The seed moves the folds, the inner validation split, the initialisation and the batch order. ``over_seeds``
holds, per figure, the mean and the standard deviation over seeds of the runs' CV means (``accuracy_seed_std``)
and the mean over seeds of the spread over folds (``accuracy_fold_std``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .atomic import atomic_write_json, atomic_write_text
from .config import ConfigError, RunConfig
from .distributed import current_shard
from .runfolder import AVERAGE_DIR, SEEDS_FILE, RunError, is_finished, is_run, read_json, read_metrics, seed_dir
from .metrics import format_mean_std
from .tables import dict_table_markdown

FIGURES = ("accuracy", "weighted_f1", "macro_f1")


def parse_seeds(text: str) -> list[int]:
    """``"1,2,3"`` -> [1, 2, 3]; at least two distinct integers."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--seeds expects comma-separated integers such as 1,2,3, got {text!r}") from None
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds needs at least two different seeds (e.g. 1,2,3), got {text!r}")
    return seeds


def over_seeds(metrics_by_seed: dict[int, dict]) -> dict:
    """Per figure: mean over seeds of the CV means, their std over seeds, and the mean std over folds."""
    summary = {}
    for key in FIGURES:
        means = np.array([m["cv"][f"{key}_mean"] for m in metrics_by_seed.values()])
        fold_stds = np.array([m["cv"][f"{key}_std"] for m in metrics_by_seed.values()])
        summary[f"{key}_mean"] = float(means.mean())
        summary[f"{key}_seed_std"] = float(means.std())
        summary[f"{key}_fold_std"] = float(fold_stds.mean())
    eces = [m.get("calibration", {}).get("ece_after") for m in metrics_by_seed.values()]
    if all(e is not None for e in eces):
        summary["ece_after_mean"] = float(np.mean(eces))
    summary["seeds"] = len(metrics_by_seed)
    return summary


def seed_rows(metrics_by_seed: dict[int, dict]) -> list[dict]:
    return [{"seed": seed, **{f"{key}_{stat}": m["cv"][f"{key}_{stat}"] for key in FIGURES for stat in ("mean", "std")}}
            for seed, m in metrics_by_seed.items()]


def write_seed_summary(out_dir: Path, metrics_by_seed: dict[int, dict], average: dict | None = None) -> dict:
    """Write ``RUN/seeds.json`` and ``RUN/seeds.md``; returns the summary. ``average``: the seeds averaged
    (:func:`average_seeds`)."""
    first = next(iter(metrics_by_seed.values()))
    summary = {"seeds": list(metrics_by_seed), "rows": seed_rows(metrics_by_seed),
               "over_seeds": over_seeds(metrics_by_seed), "protocol": first.get("protocol"),
               "runs": {str(seed): seed_dir(Path("."), seed).as_posix() for seed in metrics_by_seed},
               **({"average": average} if average else {})}
    atomic_write_json(Path(out_dir) / SEEDS_FILE, summary)
    atomic_write_text(Path(out_dir) / "seeds.md", seeds_markdown(summary) + "\n")
    return summary


def seeds_table(summary: dict) -> list[dict]:
    """Rows for a table: one per seed (CV mean ± std over folds), then the mean ± std over seeds."""
    rows = [{"seed": str(r["seed"]), "accuracy": format_mean_std(r["accuracy_mean"], r["accuracy_std"]),
             "weighted F1": format_mean_std(r["weighted_f1_mean"], r["weighted_f1_std"]),
             "macro F1": format_mean_std(r["macro_f1_mean"], r["macro_f1_std"])} for r in summary["rows"]]
    over = summary["over_seeds"]
    rows.append({"seed": "mean ± std over seeds",
                 **{name: format_mean_std(over[key + "_mean"], over[key + "_seed_std"])
                    for name, key in (("accuracy", "accuracy"), ("weighted F1", "weighted_f1"),
                                      ("macro F1", "macro_f1"))}})
    return rows


def seeds_markdown(summary: dict) -> str:
    return dict_table_markdown(seeds_table(summary))


def format_seeds(summary: dict) -> str:
    over = summary["over_seeds"]
    lines = [
        f"over {over['seeds']} seeds ({', '.join(map(str, summary['seeds']))}): "
        + "  ".join(f"{name} {format_mean_std(over[key + '_mean'], over[key + '_seed_std'])} (seeds), "
                    f"± {over[key + '_fold_std']:.4f} (folds, mean over seeds)"
                    for name, key in (("accuracy", "accuracy"), ("weighted F1", "weighted_f1"),
                                      ("macro F1", "macro_f1"))),
    ]
    average = summary.get("average")
    if average:
        figures = average["out_of_fold"]
        lines.append(f"the seeds averaged ({average['run']}/, an ensemble of the seed runs): accuracy "
                     f"{figures['accuracy']:.4f}  weighted F1 {figures['weighted_f1']:.4f}  macro F1 "
                     f"{figures['macro_f1']:.4f} (out of fold)")
    return "\n".join(lines)


def average_seeds(out_dir: Path, seeds: list[int], log=print) -> dict | None:
    """Average the seed runs into ``RUN/average`` (:func:`mmsent.ensemble.build_ensemble`: each post predicted out
    of fold by every seed, so its figures are honest); what the summary records of it. Seed runs that cannot be
    combined (e.g. kept from a version whose folds are not rebuilt) are said so and leave no average. The average
    labels by the most probable class, whatever ``train.decision`` the runs have."""
    from .ensemble import build_ensemble

    try:
        metrics = build_ensemble([seed_dir(out_dir, seed) for seed in seeds], Path(out_dir) / AVERAGE_DIR,
                                 log=lambda *a, **k: None)
    except RunError as error:
        log(f"the seed runs are not averaged: {error}")
        return None
    return {"run": AVERAGE_DIR, "out_of_fold": {key: metrics["out_of_fold"][key] for key in FIGURES}}


def train_seeds(config: RunConfig, split, out_dir: Path, seeds: list[int], log=print, resume: bool = False,
                overwrite: bool = False) -> dict:
    """Train ``config`` once per seed into ``RUN/seed_S`` (finished seeds are kept with ``resume``); the summary."""
    from .cv import train_cv
    from .summaries import format_summary

    out_dir = Path(out_dir)
    metrics_by_seed = {}
    for index, seed in enumerate(seeds, 1):
        run_dir = seed_dir(out_dir, seed)
        seeded = RunConfig.from_dict(config.to_dict())
        seeded.train.seed = seed
        if resume and is_finished(run_dir):
            log(f"[seed {seed}: {index}/{len(seeds)}] finished earlier; kept")
            metrics_by_seed[seed] = read_metrics(run_dir)
            continue
        log(f"[seed {seed}: {index}/{len(seeds)}] -> {run_dir}")
        started = resume and is_run(run_dir)
        metrics_by_seed[seed] = train_cv(seeded, split, run_dir, log=log, resume=started, overwrite=overwrite)
        log(format_summary(metrics_by_seed[seed]).splitlines()[0])
    shard = current_shard()
    if shard.is_main:  # one process averages and writes the summary; the others read it once it is there
        cross_validated = (next(iter(metrics_by_seed.values())).get("protocol") or {}).get("name") != "fixed_split"
        average = average_seeds(out_dir, seeds, log) if cross_validated else None
        summary = write_seed_summary(out_dir, metrics_by_seed, average)
    shard.barrier()
    return summary if shard.is_main else read_seed_summary(out_dir)


def read_seed_summary(folder: Path) -> dict:
    return read_json(Path(folder) / SEEDS_FILE, "a seed group's summary")
