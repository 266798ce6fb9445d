"""Grids of cross-validated runs: ablation (modalities), comparison (model family x fusion), sweeps (any keys).

An experiment folder holds one run folder per cell plus the tables::

    OUT/cells/<cell>/        a complete run folder (config.json, metrics.json, folds/...), as ``mmsent train`` writes
    OUT/<kind>.json          {"rows": [...]} (one row per cell: its settings, CV mean accuracy / F1, accuracy std)
    OUT/<kind>.md            the same as a Markdown table

Every cell is the base configuration plus its overrides, trained with :func:`mmsent.cv.train_cv` on the same
folds (same ``train.folds`` and ``train.seed``). Running the command again keeps finished cells, continues an
unfinished one from its checkpoint, and trains only what is missing.
"""

from __future__ import annotations

import itertools
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import ConfigError, RunConfig, apply_overrides, config_fields, config_types, flatten, resolve_config
from .atomic import atomic_write_json, atomic_write_text
from .cv import train_cv
from .runfolder import RunError, config_differences, is_finished, is_run, read_metrics, trained_config
from .summaries import format_summary, protocol_of
from .metrics import format_mean_std
from .tables import dict_table_markdown
from .model import MODALITIES
from .registry import FUSIONS, MODEL_FAMILIES

METRIC_COLUMNS = ("accuracy", "weighted_f1", "macro_f1", "accuracy_std", "accuracy_seed_std", "seeds")
FOLD_KEYS = ("train.folds", "train.seed")  # a grid over these would not share folds between cells


@dataclass
class Cell:
    """One configuration of a grid: its settings (column -> value) and the config overrides they mean."""

    settings: dict[str, Any]
    overrides: dict[str, Any]

    @property
    def name(self) -> str:
        """A folder name that says what the cell is: ``fusion.heads=4,fusion.ffn_dim=256``."""
        text = ",".join(f"{key}={_format_value(value)}" for key, value in self.overrides.items()) or "base"
        return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", text)


def _format_value(value) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, list) else str(value)


def ablation_cells() -> list[Cell]:
    """The same configuration on both modalities and on each alone."""
    return [Cell({"modality": m}, {"modality": m}) for m in MODALITIES]


def comparison_cells() -> list[Cell]:
    """Every registered model family x every registered fusion."""
    return [Cell({"model": model, "fusion": fusion}, {"model": model, "fusion.name": fusion})
            for model in MODEL_FAMILIES.names() for fusion in FUSIONS.names()]


def resolve_key(name: str) -> str:
    """A grid key: a config key (``fusion.heads``), or a flag's name (``heads``, ``ffn-dim`` / ``ffn_dim``, ``lr``)."""
    keys = {key: spec for key, spec, _ in config_fields()}
    if name in keys:
        return name
    by_flag = {spec.metadata["flag"].lstrip("-").replace("-", "_"): key
               for key, spec in keys.items() if spec.metadata.get("flag")}
    flag_name = name.lstrip("-").replace("-", "_")
    if flag_name in by_flag:
        return by_flag[flag_name]
    raise ConfigError(f"unknown grid key {name!r}: use a config key (see 'mmsent config') or a flag name such as "
                      f"{', '.join(sorted(by_flag)[:6])}, ...")


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """``["heads=4,8", "lr=1e-3,3e-4"]`` -> {"fusion.heads": ["4", "8"], "train.lr": ["1e-3", "3e-4"]}.

    List-valued keys (``custom.widths``) take values separated by ``;``: ``custom.widths=8,16;16,32``.
    """
    if not items:
        raise ConfigError("--grid needs at least one KEY=V1,V2,... (e.g. --grid heads=4,8 ffn_dim=256,512)")
    kinds = config_types()
    grid: dict[str, list[str]] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--grid expects KEY=V1,V2,..., got {item!r}")
        name, raw = item.split("=", 1)
        key = resolve_key(name.strip())
        if key in FOLD_KEYS:
            raise ConfigError(f"{key} cannot be swept: every cell of a grid is evaluated on the same folds")
        if key in grid:
            raise ConfigError(f"{key} is given twice in --grid")
        separator = ";" if kinds[key] is list or typing.get_origin(kinds[key]) is list else ","
        values = [v.strip() for v in raw.split(separator) if v.strip()]
        if not values:
            raise ConfigError(f"--grid {name}: no values given")
        grid[key] = values
    return grid


def sweep_cells(grid: dict[str, list[str]]) -> list[Cell]:
    """The cartesian product of the grid's values, in the order given (values checked against their types)."""
    cells = []
    for combination in itertools.product(*grid.values()):
        overrides = dict(zip(grid, combination))
        typed = flatten(apply_overrides(RunConfig(), overrides).to_dict())  # raises ConfigError on a bad value
        overrides = {key: typed[key] for key in overrides}
        cells.append(Cell(dict(overrides), overrides))
    return cells


def cell_config(overrides: dict[str, Any], cell: Cell) -> RunConfig:
    """The user's overrides, then the cell's, over the defaults of the cell's model family."""
    return resolve_config({**overrides, **cell.overrides})


def _cell_state(cell_dir: Path, config: RunConfig) -> str:
    """'new', 'finished' or 'started'; refuses a cell folder trained with other settings."""
    if not is_run(cell_dir):
        return "new"
    changed = config_differences(trained_config(cell_dir), config)
    if changed:
        raise RunError(f"{cell_dir} was trained with other settings ({'; '.join(changed)}); use another --out for "
                       "a different base configuration, or pass --overwrite to retrain every cell")
    return "finished" if is_finished(cell_dir) else "started"


def _train_cell(config: RunConfig, cell_dir: Path, split, label: str, log, overwrite: bool) -> dict:
    """One run folder of a grid, kept if finished, continued if started; its metrics."""
    state = "new" if overwrite else _cell_state(cell_dir, config)
    if state == "finished":
        log(f"{label}: finished earlier; kept")
        return read_metrics(cell_dir)
    log(f"{label}: {'continuing' if state == 'started' else 'training'}")
    metrics = train_cv(config, split, cell_dir, log=log, resume=state == "started", overwrite=overwrite)
    log(format_summary(metrics).splitlines()[0])
    return metrics


def run_grid(kind: str, overrides: dict[str, Any], cells: list[Cell], split, out_dir: Path, log=print,
             overwrite: bool = False, seeds: list[int] | None = None) -> list[dict]:
    """Train every cell (skipping finished ones, resuming started ones); write ``OUT/<kind>.json`` and ``.md``.

    ``overrides``: the user's dotted config keys shared by every cell (each cell's model family adds its defaults
    under them, see :func:`mmsent.config.resolve_config`). ``seeds``: train each cell once per seed
    (``cells/<cell>/seed_S``); a row then holds the mean over seeds and ``accuracy_seed_std``, the spread of the
    CV accuracy over seeds.
    """
    from .runfolder import seed_dir
    from .seeds import over_seeds, write_seed_summary

    out_dir = Path(out_dir)
    base = resolve_config(overrides)
    rows = []
    for index, cell in enumerate(cells, 1):
        config = cell_config(overrides, cell)
        cell_dir = out_dir / "cells" / cell.name
        label = f"[{index}/{len(cells)}] {cell.name}"
        if seeds:
            by_seed = {}
            for seed in seeds:
                seeded = RunConfig.from_dict(config.to_dict())
                seeded.train.seed = seed
                by_seed[seed] = _train_cell(seeded, seed_dir(cell_dir, seed), split, f"{label} seed {seed}", log,
                                            overwrite)
            write_seed_summary(cell_dir, by_seed)
            over = over_seeds(by_seed)
            rows.append({**cell.settings, "accuracy": over["accuracy_mean"], "weighted_f1": over["weighted_f1_mean"],
                         "macro_f1": over["macro_f1_mean"], "accuracy_std": over["accuracy_fold_std"],
                         "accuracy_seed_std": over["accuracy_seed_std"], "seeds": list(seeds),
                         "run": f"cells/{cell.name}"})
        else:
            cv = _train_cell(config, cell_dir, split, label, log, overwrite)["cv"]
            rows.append({**cell.settings, "accuracy": cv["accuracy_mean"], "weighted_f1": cv["weighted_f1_mean"],
                         "macro_f1": cv["macro_f1_mean"], "accuracy_std": cv["accuracy_std"],
                         "run": f"cells/{cell.name}"})
        write_tables(out_dir, kind, rows, base)  # after every cell: a partial table is there while it runs
    return rows


def write_tables(out_dir: Path, kind: str, rows: list[dict], base: RunConfig) -> None:

    atomic_write_json(out_dir / f"{kind}.json", {"rows": rows, "base_config": base.to_dict(),
                                                 "protocol": protocol_of(base.train)})
    atomic_write_text(out_dir / f"{kind}.md", markdown_table(rows) + "\n")


def setting_columns(rows: list[dict]) -> list[str]:
    """The columns of a grid's rows that say what a cell is (not its metrics or its run folder)."""
    return [k for k in rows[0] if k not in METRIC_COLUMNS and k != "run"] if rows else []


def display_rows(rows: list[dict]) -> list[dict[str, str]]:
    """Rows of a grid as text cells: settings, then accuracy as mean ± std over folds (bold ``**`` on the best),
    F1s. Rows trained on several seeds add the std over seeds and how far each row is below the best: a gap
    smaller than the larger of the two rows' seed spreads is marked "within seed spread"."""
    best_row = max(rows, key=lambda r: r["accuracy"], default=None)
    seeded = any("accuracy_seed_std" in r for r in rows)
    shown = []
    for row in rows:
        accuracy = format_mean_std(row["accuracy"], row["accuracy_std"])
        if row is best_row and len(rows) > 1:
            accuracy = f"**{accuracy}**"
        cells = {**{k: _format_value(row[k]) for k in setting_columns(rows)},
                 "accuracy (mean ± std over folds)" if seeded else "accuracy (mean ± std)": accuracy}
        if seeded:
            spread = row.get("accuracy_seed_std")
            cells["± std over seeds"] = f"{spread:.4f}" if spread is not None else "-"
            cells["below the best"] = _gap_to_best(row, best_row)
        cells.update({"weighted F1": f"{row['weighted_f1']:.4f}", "macro F1": f"{row['macro_f1']:.4f}"})
        shown.append(cells)
    return shown


def _gap_to_best(row: dict, best: dict) -> str:
    if row is best:
        return "-"
    gap = best["accuracy"] - row["accuracy"]
    spread = max(row.get("accuracy_seed_std") or 0.0, best.get("accuracy_seed_std") or 0.0)
    return f"{gap:.4f} ({'within' if gap <= spread else 'beyond'} seed spread)"


def markdown_table(rows: list[dict]) -> str:
    """Rows of a grid as a Markdown table: settings columns, then the metrics (accuracy as mean ± std)."""
    return dict_table_markdown(display_rows(rows))
