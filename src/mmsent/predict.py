"""Loading a run folder (JSON + safetensors only, never pickle) and predicting with its fold ensemble."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import CONFIG_VERSION, LABELS, ConfigError, RunConfig
from .cv import RunError, compute_features
from .data.dataset import Split
from .io import atomic_write_text
from .model import MultimodalClassifier, Towers, build_towers
from .training import FeatureBatches, predict_probs, resolve_device


__all__ = ["RunError", "LoadedRun", "load_run", "read_run_config", "write_predictions"]


def read_run_config(run_dir: Path) -> RunConfig:
    """The RunConfig a run folder was trained with (its config.json); RunError if it cannot be used."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise RunError(f"{run_dir} is not a run folder (no config.json); train one with 'mmsent train'")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise RunError(f"{path} is not a JSON config (refused: run folders hold only JSON and safetensors)") from None
    if not isinstance(data, dict):
        raise RunError(f"{path} does not hold a JSON object")
    if data.get("version") != CONFIG_VERSION:
        raise RunError(f"{run_dir} was written by an incompatible mmsent (config version {data.get('version')!r}, "
                       f"this mmsent reads version {CONFIG_VERSION}); retrain it")
    try:
        return RunConfig.from_dict({k: v for k, v in data.items() if k != "version"})
    except ConfigError as error:
        raise RunError(f"{path}: {error}") from None


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as error:
        raise RunError(f"{path} is not a valid safetensors file ({type(error).__name__}); refused, nothing was "
                       "executed. Weights are only read from safetensors, never unpickled.") from None


@dataclass
class LoadedRun:
    """A trained run: its config, its loaded encoders and one model per fold."""

    config: RunConfig
    towers: Towers
    models: list[MultimodalClassifier]
    device: torch.device

    def predict_split(self, split: Split, log=print) -> np.ndarray:
        """Fold-averaged class probabilities (N, 3) for every post of ``split``, in its order."""
        features = compute_features(self.towers, split, self.config, log)
        batches = FeatureBatches(features, None, np.arange(len(split.records)), 64)
        probs = [predict_probs(model, batches, self.config.train.loss, self.device)[0] for model in self.models]
        return np.mean(probs, axis=0)


def load_run(run_dir: str | Path, device: str = "auto") -> LoadedRun:
    """Load a run folder written by ``mmsent train``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"run folder not found: {run_dir}")
    config = read_run_config(run_dir)
    weight_files = sorted((run_dir / "folds").glob("fold_*/model.safetensors"))
    if not weight_files:
        raise RunError(f"{run_dir} holds no fold weights (folds/fold_K/model.safetensors); did training finish?")
    if not (run_dir / "metrics.json").is_file():  # an interrupted run: some folds are missing
        raise RunError(f"{run_dir} is an unfinished run (no metrics.json); finish it with "
                       f"'mmsent train --resume --out {run_dir} --data ...' first")
    target = resolve_device(device)
    towers = build_towers(config)
    models = []
    for path in weight_files:
        model = MultimodalClassifier(config, towers)
        state = _load_weights(path)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise RunError(f"{path} does not match the model described by config.json: {error}") from None
        models.append(model.to(target).eval())
    return LoadedRun(config, towers, models, target)


def write_predictions(path: Path, guids: list[str], probs: np.ndarray) -> None:
    """Write ``guid,tag`` rows (the test file's layout), atomically."""
    rows = ["guid,tag"] + [f"{guid},{LABELS[int(i)]}" for guid, i in zip(guids, probs.argmax(1))]
    atomic_write_text(Path(path), "\n".join(rows) + "\n")
