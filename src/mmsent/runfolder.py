"""The run folder: its file names and formats, and the questions "is this a run / finished / an ensemble".

Every module that reads or writes a run, an ensemble or a seed group goes through this one.

RUN/                                  a run (``mmsent train``)
  config.json                         the RunConfig, versioned (everything needed to rebuild the model)
  metrics.json                        {"protocol", "cv", "folds", "out_of_fold", "calibration", "data", ...}
  calibration.json                    the temperature applied at prediction time and its figures
  oof_predictions.csv                 ``guid,label,p_<class>...``: out-of-fold probabilities of every training post
  folds/fold_K/model.safetensors      the trainable weights of fold K (best epoch)
  folds/fold_K/history.json           per-epoch figures
  folds/fold_K/result.json            {"row", "val_probs", "data"}: a finished fold (resume skips it)
  folds/fold_K/checkpoint.safetensors training state after the last finished epoch (only while K is unfinished)
ENS/                                  an ensemble (``mmsent ensemble``)
  ensemble.json                       {"members": [paths relative to ENS], "folds", "seed", "seeds"?, "data",
                                       "stacker"?}  (seed: the first member's; seeds: each member's, if they differ)
RUN/evaluations/NAME.json, NAME.md    ``mmsent evaluate``'s scores of the run on a labelled set
  metrics.json, calibration.json, oof_predictions.csv   as a run's
GROUP/seeds.json                      one run per seed (``mmsent train --seeds``): GROUP/seed_S/ are runs and
                                      GROUP/average/ is their average (an ensemble)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import atomic_write_json, atomic_write_text
from .calibration import Calibration
from .config import CONFIG_VERSION, ConfigError, RunConfig, flatten, normalised_labels, run_labels
from .errors import UserError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
CALIBRATION_FILE = "calibration.json"
DECISION_FILE = "decision.json"
OOF_FILE = "oof_predictions.csv"
ENSEMBLE_FILE = "ensemble.json"
SEEDS_FILE = "seeds.json"
AVERAGE_DIR = "average"  # GROUP/average: the seed runs of a group averaged (an ensemble)
EVALUATIONS_DIR = "evaluations"  # RUN/evaluations/<labels file>.json|.md: held-out evaluations of the run
MODEL_FILE = "model.safetensors"
HISTORY_FILE = "history.json"
RESULT_FILE = "result.json"
CHECKPOINT_FILE = "checkpoint.safetensors"
FOLD_FILES = (MODEL_FILE, HISTORY_FILE, RESULT_FILE, CHECKPOINT_FILE)
RUN_FILES = (METRICS_FILE, OOF_FILE)  # what a finished run adds beside config.json
# How to run, not what is trained: --resume may change them.
RESUMABLE_KEYS = ("train.device", "train.workers", "train.backend")


class RunError(UserError):
    """A run folder that cannot be used as asked; the message says why."""


# ---- what a folder is ------------------------------------------------------------------------------------------

def is_run(folder: Path) -> bool:
    return (Path(folder) / CONFIG_FILE).is_file()


def is_finished(folder: Path) -> bool:
    """A run or ensemble whose metrics are written (training ended)."""
    return (Path(folder) / METRICS_FILE).is_file()


def is_ensemble(folder: Path) -> bool:
    return (Path(folder) / ENSEMBLE_FILE).is_file()


def is_seed_group(folder: Path) -> bool:
    return (Path(folder) / SEEDS_FILE).is_file()


def is_finished_run(folder: Path) -> bool:
    """A run (not an ensemble) whose training ended."""
    return is_run(folder) and is_finished(folder)


def seed_dir(group: Path, seed: int) -> Path:
    """The run of ``seed`` in a seed group (``mmsent train --seeds``)."""
    return Path(group) / f"seed_{seed}"


def seed_dirs(group: Path) -> list[Path]:
    """Every run folder of a seed group, in name order."""
    return sorted(p for p in Path(group).glob("seed_*") if p.is_dir())


def fold_dir(run_dir: Path, fold: int) -> Path:
    return Path(run_dir) / "folds" / f"fold_{fold}"


def fold_dirs(run_dir: Path) -> list[Path]:
    return sorted(p for p in (Path(run_dir) / "folds").glob("fold_*") if p.is_dir())


def weight_files(run_dir: Path) -> list[Path]:
    """Each fold's weights, in fold order; RunError where training has not finished."""
    files = sorted((Path(run_dir) / "folds").glob(f"fold_*/{MODEL_FILE}"))
    if not files:
        raise RunError(f"{run_dir} holds no fold weights (folds/fold_K/{MODEL_FILE}); did training finish?")
    if not is_finished(run_dir):  # an interrupted run: some folds are missing
        raise RunError(f"{run_dir} is an unfinished run (no {METRICS_FILE}); finish it with "
                       f"'mmsent train --resume --out {run_dir} --data ...' first")
    return files


def read_weights(path: Path) -> dict:
    """One fold's weights (safetensors only: nothing is ever unpickled)."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as error:
        raise RunError(f"{path} is not a valid safetensors file ({type(error).__name__}); refused, nothing was "
                       "executed. Weights are only read from safetensors, never unpickled.") from None


# ---- JSON files ------------------------------------------------------------------------------------------------

def read_json(path: Path, what: str, expect: type = dict):
    """A JSON file of a run holding an ``expect`` (object or list); RunError naming ``what`` it should be if it is
    missing or unreadable."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{path} not found ({what})") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise RunError(f"{path} is not JSON ({what}); refused: run folders hold only JSON and safetensors") from None
    if not isinstance(data, expect):
        raise RunError(f"{path} does not hold a JSON {'object' if expect is dict else 'list'} ({what})")
    return data


def read_run_config(run_dir: Path) -> RunConfig:
    """The RunConfig a run folder was trained with (its config.json); RunError if it cannot be used."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise RunError(f"{run_dir} is not a run folder (no {CONFIG_FILE}); train one with 'mmsent train'")
    data = read_json(path, "a run's config")
    if data.get("version") != CONFIG_VERSION:
        raise RunError(f"{run_dir} was written by an incompatible mmsent (config version {data.get('version')!r}, "
                       f"this mmsent reads version {CONFIG_VERSION}); retrain it")
    saved = {k: v for k, v in data.items() if k != "version"}
    for key, meant in SAVED_BEFORE_THEIR_SECTION.items():
        section, name = key.split(".")
        saved.setdefault(section, {}).setdefault(name, meant)
    try:
        return RunConfig.from_dict(saved)
    except ConfigError as error:
        raise RunError(f"{path}: {error}") from None


# What a run saved before a config section existed did, where today's default differs: lexicon scores became the
# default after runs had been saved without a "lexicon" section (those read none).
SAVED_BEFORE_THEIR_SECTION = {"lexicon.enabled": False}


LEGACY_FOLD_SCHEME = "earlier"  # the folds of a run saved without train.fold_scheme: not rebuilt by this version


def trained_config(run_dir: Path) -> RunConfig:
    """The config a run was trained with, for continuing or reusing it: as :func:`read_run_config`, except for the
    keys a run's config.json may predate: without ``train.select_on`` it chose its epochs on the scored fold
    (``scored_fold``); without ``train.fold_scheme`` its folds were drawn otherwise (:data:`LEGACY_FOLD_SCHEME`)."""
    config = read_run_config(run_dir)
    saved = read_json(Path(run_dir) / CONFIG_FILE, "a run's config").get("train") or {}
    if "select_on" not in saved:
        config.train.select_on = "scored_fold"
    if "fold_scheme" not in saved:
        config.train.fold_scheme = LEGACY_FOLD_SCHEME
    return config


def require_current_folds(config: RunConfig, run_dir: Path, what: str) -> None:
    """RunError if the run (its :func:`trained_config`) drew its folds in a way this version cannot rebuild."""
    if config.train.fold_scheme == LEGACY_FOLD_SCHEME:
        raise RunError(f"{run_dir} was cross-validated on folds drawn by an earlier version of mmsent, which this "
                       f"one cannot rebuild, so it cannot {what}; train it again (--overwrite)")


def config_differences(saved: RunConfig, given: RunConfig) -> list[str]:
    """``key: saved -> given`` for every config key that differs and changes what is trained."""
    old, new = flatten(saved.to_dict()), flatten(given.to_dict())
    old["data.labels"] = list(run_labels(saved))  # a run saved without its label set predicts the three polarities
    new["data.labels"] = list(normalised_labels(new.get("data.labels") or []))
    if not new["data.labels"]:  # "from the data": the run recorded what the data held
        new["data.labels"] = old["data.labels"]
    return [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in sorted(set(old) | set(new))
            if key not in RESUMABLE_KEYS and old.get(key) != new.get(key)]


def read_metrics(run_dir: Path) -> dict:
    """metrics.json of a finished run or ensemble."""
    if not is_finished(run_dir):
        raise RunError(f"{run_dir} is not a finished run (no {METRICS_FILE}); finish it with 'mmsent train'")
    return read_json(Path(run_dir) / METRICS_FILE, "a run's metrics")


def write_metrics(run_dir: Path, metrics: dict) -> None:
    atomic_write_json(Path(run_dir) / METRICS_FILE, metrics)


def read_protocol(run_dir: Path) -> dict | None:
    """How a finished run's figures were produced (None for runs from before it was recorded)."""
    return read_metrics(run_dir).get("protocol")


def read_calibration_dict(run_dir: Path) -> dict | None:
    """calibration.json's content, or None for a run without one."""
    path = Path(run_dir) / CALIBRATION_FILE
    return read_json(path, "a run's calibration") if path.is_file() else None


def read_calibration(run_dir: Path) -> Calibration | None:
    """The run's saved calibration (None for a run without one: it predicts with ``T = 1``)."""
    data = read_calibration_dict(run_dir)
    if data is None:
        return None
    try:
        return Calibration.from_dict(data)
    except (TypeError, ValueError) as error:
        raise RunError(f"{run_dir}/calibration.json is not a calibration written by 'mmsent train' ({error})") from None


def read_temperature(run_dir: Path) -> float:
    calibration = read_calibration(run_dir)
    return calibration.temperature if calibration is not None else 1.0


def write_calibration_dict(run_dir: Path, data: dict) -> None:
    atomic_write_json(Path(run_dir) / CALIBRATION_FILE, data)


def read_decision_dict(run_dir: Path) -> dict | None:
    """decision.json's content (the decision rule, :mod:`mmsent.decision`), or None: the most probable class."""
    path = Path(run_dir) / DECISION_FILE
    return read_json(path, "a run's decision rule") if path.is_file() else None


def write_decision_dict(run_dir: Path, data: dict) -> None:
    atomic_write_json(Path(run_dir) / DECISION_FILE, data)


# ---- folds -----------------------------------------------------------------------------------------------------

def finished_fold(fold_folder: Path, fingerprint: str, val_size: int) -> dict | None:
    """The saved result of a finished fold (None if it has not finished); refuses one trained on other data."""
    path = Path(fold_folder) / RESULT_FILE
    if not path.is_file() or not (Path(fold_folder) / MODEL_FILE).is_file():
        return None
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
        ok = isinstance(result, dict) and len(result["val_probs"]) == val_size
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        ok = False
    if not ok:
        return None  # unreadable (cannot come from an atomic write): train the fold again
    if result.get("data") != fingerprint:
        raise RunError(f"{fold_folder} was trained on other data than the --data given now (its content differs); "
                       "resume with the same data, or pass --overwrite to start again")
    return result


def write_fold_result(fold_folder: Path, row: dict, val_probs: np.ndarray, fingerprint: str) -> None:
    """Mark a fold finished (written last: its presence is what resume looks for)."""
    atomic_write_json(Path(fold_folder) / RESULT_FILE,
                      {"row": row, "val_probs": np.asarray(val_probs).tolist(), "data": fingerprint})


def data_fingerprint(run_dir: Path) -> str:
    """The content hash of the data a finished run was trained on (from its first fold's result)."""
    result = fold_dir(run_dir, 0) / RESULT_FILE
    try:
        return json.loads(result.read_text(encoding="utf-8"))["data"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        raise RunError(f"{run_dir} is not a finished run ({result} missing or unreadable)") from None


# ---- preparing a folder for training ---------------------------------------------------------------------------

def remove_partial_writes(folder: Path, names) -> None:
    """Temporary files of atomic writes that a killed run left behind (``.NAME.*.tmp``, see :mod:`.atomic`)."""
    for name in names:
        for leftover in Path(folder).glob(f".{name}.*.tmp"):
            leftover.unlink(missing_ok=True)


def prepare_run_dir(out_dir: Path, config: RunConfig, resume: bool = False, overwrite: bool = False) -> None:
    """Make ``out_dir`` ready for ``config``: refuse to replace a run unless asked; clear old outputs when starting."""
    out_dir = Path(out_dir)
    if is_ensemble(out_dir) or is_seed_group(out_dir):
        kind = "an ensemble (ensemble.json)" if is_ensemble(out_dir) else "runs over seeds (seeds.json)"
        raise RunError(f"{out_dir} holds {kind}; train the run into another --out")
    for fold in fold_dirs(out_dir):
        remove_partial_writes(fold, FOLD_FILES)
    remove_partial_writes(out_dir, (*RUN_FILES, CONFIG_FILE))
    if resume:
        if overwrite:
            raise RunError("--resume and --overwrite exclude each other: resume continues a run, overwrite restarts it")
        saved = trained_config(out_dir)
        require_current_folds(saved, out_dir, "be continued")
        changed = config_differences(saved, config)
        if changed:
            raise RunError(f"--resume continues {out_dir} with the config it was started with ({CONFIG_FILE}), but "
                           f"these settings differ from it: {'; '.join(changed)}. Drop those flags to resume, or "
                           "train a new run with another --out")
        return
    finished = is_finished(out_dir)
    started = any((fold / name).is_file() for fold in fold_dirs(out_dir) for name in FOLD_FILES)
    if (finished or started) and not overwrite:
        state = f"a finished run ({METRICS_FILE})" if finished else "an unfinished run (fold checkpoints or results)"
        raise RunError(f"{out_dir} already holds {state}; refusing to overwrite it. Pass --resume to continue it, "
                       "--overwrite to replace it, or choose another --out")
    for fold in fold_dirs(out_dir):  # only files a run writes: anything else in the folder is left alone
        for name in FOLD_FILES:
            (fold / name).unlink(missing_ok=True)
        if not any(fold.iterdir()):
            fold.rmdir()
    for name in RUN_FILES:
        (out_dir / name).unlink(missing_ok=True)
    for evaluation in (out_dir / EVALUATIONS_DIR).glob("*.*"):  # scores of the model being replaced
        if evaluation.suffix in (".json", ".md"):
            evaluation.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    config.save(out_dir / CONFIG_FILE)


# ---- out-of-fold predictions -----------------------------------------------------------------------------------

@dataclass
class OutOfFold:
    """A run's out-of-fold predictions: one row per scored training post."""

    guids: list[str]
    labels: list[str]  # each post's true label (a class name)
    probs: np.ndarray  # (N, C) class probabilities, columns in ``classes`` order
    classes: tuple[str, ...]

    def label_indices(self) -> np.ndarray:
        """(N,) true labels as column indices of ``probs``."""
        index = {name: i for i, name in enumerate(self.classes)}
        return np.array([index[name] for name in self.labels], dtype=np.int64)


def oof_header(classes) -> str:
    return "guid,label," + ",".join(f"p_{name}" for name in classes)


def write_oof(run_dir: Path, oof: OutOfFold) -> None:
    """``guid,label,p_<class>...`` rows, atomically."""
    rows = [oof_header(oof.classes)] + [f"{guid},{name}," + ",".join(f"{v:.5f}" for v in p)
                                        for guid, name, p in zip(oof.guids, oof.labels, oof.probs)]
    atomic_write_text(Path(run_dir) / OOF_FILE, "\n".join(rows) + "\n")


def read_oof(run_dir: Path) -> OutOfFold:
    """A finished run's (or ensemble's) out-of-fold predictions; RunError if the file is missing or malformed."""
    path = Path(run_dir) / OOF_FILE
    if not path.is_file():
        raise RunError(f"{run_dir} is not a finished run (no {OOF_FILE}); finish it with 'mmsent train'")
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split(",") if lines else []
    classes = tuple(name[2:] for name in header[2:])
    if header[:2] != ["guid", "label"] or not classes or not all(name.startswith("p_") for name in header[2:]):
        raise RunError(f"{path} does not start with a header 'guid,label,p_<class>,...'")
    rows = [line.split(",") for line in lines[1:] if line]
    try:
        probs = np.array([[float(v) for v in row[2:]] for row in rows], dtype=np.float64).reshape(len(rows), -1)
    except ValueError:
        probs = None
    if probs is None or probs.shape[1] != len(classes) or any(row[1] not in classes for row in rows):
        raise RunError(f"{path} holds a row that is not 'guid,label,p,...' with a label of its header")
    return OutOfFold([row[0] for row in rows], [row[1] for row in rows], probs, classes)


# ---- ensembles -------------------------------------------------------------------------------------------------

def write_ensemble_manifest(out_dir: Path, members: list[str], identity: dict, stacker: dict | None) -> None:
    atomic_write_json(Path(out_dir) / ENSEMBLE_FILE,
                      {"members": members, **identity, **({"stacker": stacker} if stacker else {})})


def member_dirs(ensemble_dir: Path) -> list[Path]:
    """The member run folders of an ensemble folder (paths in ensemble.json are relative to it)."""
    path = Path(ensemble_dir) / ENSEMBLE_FILE
    members = read_json(path, "an ensemble's manifest").get("members")
    if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
        raise RunError(f"{path} does not list its member runs ('members': [paths])")
    dirs = [Path(ensemble_dir) / member for member in members]
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing:
        raise RunError(f"{ensemble_dir}: member runs not found: {', '.join(missing)} ({ENSEMBLE_FILE} names them "
                       "relative to the ensemble folder: move them together)")
    return dirs


def read_stacker_dict(ensemble_dir: Path) -> dict | None:
    """The ensemble's saved stacker (see :class:`.stacking.Stacker`), or None where its members are averaged."""
    return read_json(Path(ensemble_dir) / ENSEMBLE_FILE, "an ensemble's manifest").get("stacker")
