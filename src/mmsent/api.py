"""Training from Python: :func:`train` (what ``mmsent train`` runs) and what it returns, :class:`TrainResult` (one
run) or :class:`SeedsResult` (one run per seed).

``train`` decides what is trained and on what: the config (a profile, then overrides; on ``resume`` the run's saved
config), the posts (a data set of any format, or posts already read into a :class:`~mmsent.data.dataset.Split`) and
the protocol (k-fold cross-validation, or one model chosen on a validation file of a lab folder). The training
itself is :func:`mmsent.cv.train_cv`. Imports no PyTorch until it trains.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .config import ConfigError, RunConfig, resolve_config, run_labels
from .data.dataset import Split
from .decision import DecisionRule
from .errors import PackageError
from .runfolder import (CALIBRATION_FILE, CONFIG_FILE, DECISION_FILE, METRICS_FILE, OOF_FILE, fold_dirs, is_run,
                        is_seed_group, read_run_config, require_current_folds, seed_dir, trained_config)

__all__ = ["RunFiles", "SeedsResult", "TrainResult", "train", "train_overrides"]


@dataclass(frozen=True)
class RunFiles:
    """The files of a run folder (layout: :mod:`mmsent.runfolder`)."""

    config: Path
    metrics: Path
    out_of_fold: Path  # every scored post's class probabilities
    calibration: Path
    decision: Path | None  # None: labels are the most probable class
    folds: tuple[Path, ...]  # one folder per fold model

    @classmethod
    def of(cls, run_dir: Path) -> "RunFiles":
        decision = run_dir / DECISION_FILE
        return cls(run_dir / CONFIG_FILE, run_dir / METRICS_FILE, run_dir / OOF_FILE, run_dir / CALIBRATION_FILE,
                   decision if decision.is_file() else None, tuple(fold_dirs(run_dir)))


@dataclass(frozen=True)
class TrainResult:
    """A finished run: its folder, its figures and what was fitted on its out-of-fold predictions.

    ``figures``: the mean and std over folds (``accuracy_mean``, ``macro_f1_std``, ...; for a fixed split the
    validation file's figures); ``out_of_fold``: the figures of every scored post at once (with the confusion
    matrix); ``metrics``: all of metrics.json.
    """

    run_dir: Path
    classes: tuple[str, ...]
    figures: dict[str, float]
    out_of_fold: dict[str, Any]
    protocol: dict[str, Any]
    temperature: float  # the calibration applied to every prediction (1 = none)
    decision: DecisionRule | None  # the fitted decision rule; None = the most probable class
    files: RunFiles
    metrics: dict[str, Any]
    warnings: tuple[str, ...] = ()  # what was repaired or worked around in the data

    @classmethod
    def from_metrics(cls, run_dir: Path, metrics: dict, warnings: Sequence[str] = ()) -> "TrainResult":
        run_dir = Path(run_dir)
        decision = metrics.get("decision")
        return cls(run_dir, tuple(run_labels(read_run_config(run_dir))),
                   dict(metrics["cv"]), dict(metrics["out_of_fold"]), dict(metrics.get("protocol") or {}),
                   float(metrics.get("calibration", {}).get("temperature", 1.0)),
                   DecisionRule.from_dict(decision) if decision else None, RunFiles.of(run_dir), metrics,
                   tuple(warnings))

    def summary(self) -> str:
        """What ``mmsent train`` prints about the run: figures, protocol, calibration, decision rule, data."""
        from .summaries import format_summary

        return format_summary(self.metrics)


@dataclass(frozen=True)
class SeedsResult:
    """The same configuration trained once per seed: each seed's run and the spread over seeds (seeds.json)."""

    out_dir: Path
    runs: dict[int, TrainResult]
    over_seeds: dict[str, float]  # accuracy_mean, accuracy_seed_std, accuracy_fold_std, ...
    seeds_summary: dict[str, Any] = field(repr=False)  # all of seeds.json
    warnings: tuple[str, ...] = ()

    def summary(self) -> str:
        from .seeds import format_seeds

        return format_seeds(self.seeds_summary)


def train_overrides(profile: str | None = None, overrides: Mapping[str, Any] | None = None,
                    **settings: Any) -> dict[str, Any]:
    """The dotted config overrides of a profile, then ``overrides``, then ``settings`` (each over the one before)."""
    merged: dict[str, Any] = {}
    if profile is not None:
        from .profiles import profile_overrides

        merged.update(profile_overrides(profile))
    merged.update(overrides or {})
    merged.update(settings)
    return merged


def train(data: str | Path | Split, out: str | Path, profile: str | None = None, *,
          overrides: Mapping[str, Any] | None = None, seeds: Sequence[int] | str | None = None, resume: bool = False,
          overwrite: bool = False, train_file: str | Path | None = None, val_file: str | Path | None = None,
          test_file: str | Path | None = None, log: Callable[[str], None] = print,
          **settings: Any) -> TrainResult | SeedsResult:
    """Train a run folder ``out`` on ``data``, as ``mmsent train`` does, and return its :class:`TrainResult` (with
    ``seeds``: a :class:`SeedsResult` of one run per seed in ``out/seed_S``).

    ``data``: what ``--data`` takes (a lab folder, an MVSA release folder or a table file), or posts already read
    (:func:`mmsent.data.dataset.posts_split`). ``train_file`` / ``test_file``: a lab folder's label files (default
    train.txt / test_without_label.txt); ``val_file``: a lab folder's labelled validation file, which chooses the
    epoch of one model trained on the training file instead of cross-validating.

    The config: the defaults, then ``profile`` (a registered name, as ``--profile``), then ``overrides`` (dotted keys,
    ``{"train.epochs": 3}``), then ``settings`` (the same passed as keywords: ``**{"train.folds": 3}``).
    ``resume``: continue the interrupted run in ``out`` with its saved config (only the device, workers and backend
    may differ); ``overwrite``: replace a run there. ``seeds``: at least two seeds (or ``"1,2,3"``).
    ``log`` receives every progress line (``lambda line: None`` for none).
    """
    _load_training_plugins()
    from .cv import train_cv
    from .distributed import current_shard
    from .seeds import train_seeds

    out, requested = Path(out), train_overrides(profile, overrides, **settings)
    seeds = _checked_seeds(seeds, requested, val_file)
    config = _train_config(out, requested, seeds, resume)
    split, val_split = _training_data(data, config, train_file, val_file, test_file)
    say = current_shard().report(log)
    say(_header(config, split, val_split, val_file, out, resume))
    if seeds is not None:
        summary = train_seeds(config, split, out, seeds, log=say, resume=resume, overwrite=overwrite)
        runs = {seed: _result(seed_dir(out, seed), None, split) for seed in seeds}
        return SeedsResult(out, runs, dict(summary["over_seeds"]), summary, _warnings(split))
    metrics = train_cv(config, split, out, log=log, resume=resume, overwrite=overwrite, val_split=val_split)
    return _result(out, metrics, split)


def _load_training_plugins() -> None:
    """Register the encoders, fusions, losses and model families; a clear error in a base install."""
    from . import TRAIN_EXTRAS, load_plugins

    try:
        load_plugins()
    except ImportError as error:
        raise PackageError(f"training needs the training extras ({error.name} is not installed): {TRAIN_EXTRAS}"
                           ) from None


def _checked_seeds(seeds, requested: dict, val_file) -> list[int] | None:
    """``seeds`` as a list of at least two different seeds (None: one run), refused with what excludes it."""
    from .seeds import parse_seeds

    if seeds is None:
        return None
    seeds = parse_seeds(seeds if isinstance(seeds, str) else ",".join(str(int(seed)) for seed in seeds))
    if "train.seed" in requested:
        raise ConfigError("--seeds and --seed exclude each other: --seeds 1,2,3 trains one run per seed")
    if val_file is not None:
        raise ConfigError("--seeds cross-validates; it does not combine with --val-file")
    return seeds


def _train_config(out: Path, requested: dict, seeds: list[int] | None, resume: bool) -> RunConfig:
    """What is trained: ``requested`` over the defaults, or on ``resume`` over the run's saved config (what differs
    from it is refused by ``train_cv``)."""
    if seeds is None and is_seed_group(out):
        raise ConfigError(f"{out} holds runs over seeds (seeds.json); give --seeds again, or another --out")
    if seeds is not None and is_run(out):
        raise ConfigError(f"{out} holds a single run (config.json); write the seeds to another --out")
    if not resume or seeds is not None:
        return resolve_config(requested)
    if not is_run(out):
        raise ConfigError(f"--resume: {out} holds no run to continue (no config.json); train without --resume")
    saved = trained_config(out)
    require_current_folds(saved, out, "be continued")
    return resolve_config(requested, base=saved)


def _training_data(data, config: RunConfig, train_file, val_file, test_file) -> tuple[Split, Split | None]:
    """The training posts, read as ``config.data`` says (on resume: as the run read them, unless overridden), and
    a fixed split's validation posts (``val_file``, of a lab folder) with the same label set."""
    from .data.dataset import open_data
    from .data.formats import DataSource, format_of

    if isinstance(data, Split):
        if val_file is not None or train_file is not None or test_file is not None:
            raise ConfigError("train_file, test_file and val_file name label files of a lab folder, not posts given "
                              "in memory")
        return data, None
    path, train_file, test_file = Path(data), _path(train_file), _path(test_file)
    split = open_data(path, "train", config.data, train_file, test_file)
    if val_file is None:
        return split, None
    if format_of(DataSource(path, config.data)) != "folder":
        raise ConfigError("--val-file names a guid,tag file of a lab folder; write the data set as one first "
                          "('mmsent convert --data DATA --out FOLDER'), then 'mmsent split' it")
    return split, open_data(path, "train", replace(config.data, labels=list(split.label_names)),
                            train_file=Path(val_file))


def _path(value) -> Path | None:
    return None if value is None else Path(value)


def _header(config: RunConfig, split: Split, val_split: Split | None, val_file, out: Path, resume: bool) -> str:
    """The line ``mmsent train`` starts with: what is trained, on how many posts, how, and where to."""
    from .distributed import current_shard

    shard = current_shard()
    processes = f" in {shard.world_size} processes" if shard.world_size > 1 else ""
    scheme = (f"validation file {val_file} ({len(val_split.records)} posts)" if val_split is not None
              else f"{config.train.folds} folds")
    return (f"{'resuming' if resume else 'training'} {config.model} / {config.fusion.name} / modality "
            f"{config.modality} on {len(split.records)} posts, {scheme}{processes} -> {out}")


def _warnings(split: Split) -> tuple[str, ...]:
    return tuple(str(problem) for problem in split.problems if not problem.fatal)


def _result(run_dir: Path, metrics: dict | None, split: Split) -> TrainResult:
    from .runfolder import read_metrics

    return TrainResult.from_metrics(run_dir, metrics if metrics is not None else read_metrics(run_dir),
                                    _warnings(split))
