"""Loading a run folder (JSON + safetensors only, never pickle) and predicting with its fold ensemble."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .calibration import apply_temperature
from .config import RunConfig, run_labels
from .data.dataset import Split
from .data.text import clean_text, decode_text
from .decision import DecisionRule
from .features import compute_features
from .inference import FeatureBatches, predict_probs, resolve_device
from .model import MultimodalClassifier, Towers, load_towers
from .prediction import Prediction, Predictor, write_predictions
from .runfolder import (AVERAGE_DIR, RunError, is_ensemble, is_seed_group, member_dirs, read_decision_dict,
                        read_run_config, read_stacker_dict, read_temperature, read_weights, weight_files)
from .stacking import LEXICON_SCORES, Stacker, lexicon_scores_of_raw, stack_inputs

__all__ = ["RunError", "Predictor", "LoadedRun", "LoadedEnsemble", "Prediction", "load_run_folder",
           "write_predictions"]

_thread_state = threading.local()  # .inference is True on a run's inference thread


def _inference_thread() -> ThreadPoolExecutor:
    """The one thread that loads a run and runs all of its tensor work (closed with the run: ``close()``).

    Torch's CPU kernels use OpenMP, which keeps a team of threads per calling thread. Once the teams hold more
    threads than there are cores, OpenMP stops spinning between parallel regions and every region pays a sleep and
    a wake-up, which makes every post much slower once a second thread has run the model (benchmarks/README_serve.md).
    Callers may use any threads: their work is queued to this one (which also serialises it).
    """
    return ThreadPoolExecutor(1, thread_name_prefix="mmsent-inference",
                              initializer=lambda: setattr(_thread_state, "inference", True))


@dataclass
class LoadedRun(Predictor):
    """A trained run: its config, its loaded encoders and one model per fold. Safe to share between threads.

    ``temperature``: the run's calibration (``RUN/calibration.json``; 1 = none), applied to the fold-averaged
    probabilities of every prediction."""

    config: RunConfig
    towers: Towers
    models: list[MultimodalClassifier]
    device: torch.device
    run_dir: Path | None = None
    _worker: ThreadPoolExecutor = field(default_factory=_inference_thread, repr=False, compare=False)
    temperature: float = 1.0

    def _call(self, fn, *args):
        """``fn(*args)`` on the run's inference thread, waiting for its result."""
        if getattr(_thread_state, "inference", False):
            return fn(*args)
        return self._worker.submit(fn, *args).result()

    @property
    def modalities(self) -> list[str]:
        """What the run reads: ["text", "image"], or one of them."""
        return self.towers.modalities

    @property
    def classes(self) -> tuple[str, ...]:
        return run_labels(self.config)

    def close(self) -> None:
        self._worker.shutdown(wait=True)

    @property
    def description(self) -> str:
        calibrated = f", temperature {self.temperature:.3f}" if self.temperature != 1.0 else ", uncalibrated"
        models = "one model" if len(self.models) == 1 else f"{len(self.models)}-fold ensemble"
        return f"{models}{calibrated}"

    def _ensemble(self, features: dict[str, torch.Tensor], n: int) -> np.ndarray:
        """Fold-averaged class probabilities (N, C) from frozen features of N posts, temperature-scaled."""
        batches = FeatureBatches(features, None, np.arange(n), 64, pin_memory=self.device.type == "cuda")
        probs, _ = predict_probs(self.models, batches, self.config.train.loss, self.device)
        return apply_temperature(probs, self.temperature)

    def predict_split(self, split: Split, log=print, cache: bool = True) -> np.ndarray:
        """Fold-averaged class probabilities (N, C) for every post of ``split``, in its order."""
        def work():
            features = compute_features(self.towers.present(), split, self.config.text_prep,
                                        self.config.train.workers, log, cache=cache)
            return self._ensemble(features, len(split.records))

        return self._call(work)

    def _batch_probs(self, texts, images, n, image_texts=None):
        image_tower, text_tower = self.towers.image, self.towers.text
        # Decoding and cleaning run in the caller's thread (callers decode in parallel); tensors on the run's thread.
        pixels = [image_tower.load(image) if image is not None else None for image in images] if image_tower else None
        cleaned = [clean_text(text or "", self.config.text_prep) for text in texts] if text_tower else None
        read = (image_texts if image_texts is not None else self.image_texts(images)) if self.towers.image_text else None
        raw = list(texts) if self.towers.lexicon else None
        return self._call(self._encode_and_ensemble, cleaned, pixels, n, read, raw)

    def image_texts(self, images: list) -> list[str] | None:
        """The text read in each image (None: the run does not read it)."""
        if self.towers.image_text is None:
            return None
        return [self.towers.image_text.read(image) for image in images]

    @torch.inference_mode()
    def _encode_and_ensemble(self, texts: list[str] | None, pixels: list | None, n: int,
                             image_texts: list[str] | None = None, raw_texts: list | None = None) -> np.ndarray:
        """Frozen encoders on in-memory posts, then the fold ensemble -> probabilities (N, C)."""
        features = {}
        if texts is not None:
            features.update(self.towers.text.encode_items(texts))
        if pixels is not None:
            features.update(self.towers.image.encode_items(pixels))
        if image_texts is not None:
            features.update(self.towers.image_text.encode_items(image_texts))
        if raw_texts is not None:
            features.update(self.towers.lexicon.encode_items(raw_texts))
        return self._ensemble(features, n)


@dataclass
class LoadedEnsemble(Predictor):
    """Several runs (``mmsent ensemble``) whose class probabilities are averaged, or combined by the ensemble's
    stacker (:mod:`.stacking`) where it has one."""

    members: list[LoadedRun]
    run_dir: Path | None = None
    stacker: Stacker | None = None
    temperature: float = 1.0  # the ensemble's own calibration, applied to the combined probabilities

    @property
    def models(self) -> list[MultimodalClassifier]:
        """Every fold model of every member."""
        return [model for member in self.members for model in member.models]

    @property
    def modalities(self) -> list[str]:
        return [m for m in ("text", "image") if any(m in member.modalities for member in self.members)]

    @property
    def classes(self) -> tuple[str, ...]:
        return self.members[0].classes

    def close(self) -> None:
        for member in self.members:
            member.close()

    @property
    def description(self) -> str:
        stacked = ", stacked with VADER's lexicon scores" if self.stacker else ""
        calibrated = f", temperature {self.temperature:.3f}" if self.temperature != 1.0 else ", uncalibrated"
        return f"ensemble of {len(self.members)} runs, {len(self.models)} fold models{stacked}{calibrated}"

    def _combine(self, member_probs: list[np.ndarray], read_raw_texts) -> np.ndarray:
        """Members' probabilities [(N, C), ...] -> the ensemble's (N, C). ``read_raw_texts()`` gives the posts' raw
        texts (None: no text), read only by a stacker."""
        if self.stacker is None:
            combined = np.mean(member_probs, axis=0)
        else:
            combined = self.stacker.probabilities(stack_inputs(member_probs, lexicon_scores_of_raw(read_raw_texts())))
        return apply_temperature(combined, self.temperature)

    def predict_split(self, split: Split, log=print, cache: bool = True) -> np.ndarray:
        return self._combine([member.predict_split(split, log, cache) for member in self.members],
                             lambda: [decode_text(raw).text if raw is not None else None
                                      for raw in map(split.read_text_bytes, split.guids)])

    def _batch_probs(self, texts, images, n, image_texts=None):
        # each member reads the images with its own OCR settings (from the cache where another member read them)
        return self._combine([member._batch_probs(texts, images, n) for member in self.members], lambda: texts)

    def image_texts(self, images: list) -> list[str] | None:
        return next((read for read in (m.image_texts(images) for m in self.members) if read is not None), None)


def load_run_folder(run_dir: str | Path, device: str = "auto", backend: str | None = None) -> Predictor:
    """Load a run folder written by ``mmsent train`` (a :class:`LoadedRun`) or by ``mmsent ensemble`` (a
    :class:`LoadedEnsemble` of its member runs). Close it (``close()`` or ``with``) to stop its inference thread.

    ``backend``: what runs the frozen encoders (one of ``config.BACKENDS``); None = the run's ``train.backend``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"run folder not found: {run_dir}")
    if is_seed_group(run_dir):
        raise RunError(f"{run_dir} holds one run per seed (mmsent train --seeds); give their average, "
                       f"{run_dir / AVERAGE_DIR}, or one of them, e.g. {run_dir / 'seed_' }S")
    if is_ensemble(run_dir):
        return _load_ensemble(run_dir, device, backend)
    config = read_run_config(run_dir)
    if backend is not None:
        config.train.backend = backend
    files = weight_files(run_dir)
    target = resolve_device(device)
    worker = _inference_thread()
    try:
        towers, models = worker.submit(_build_models, config, files, target).result()
    except BaseException:
        worker.shutdown(wait=False)
        raise
    run = LoadedRun(config, towers, models, target, run_dir, worker, temperature=read_temperature(run_dir))
    run.decision_offsets = read_decision_offsets(run_dir)
    return run


def _load_ensemble(run_dir: Path, device: str, backend: str | None) -> "LoadedEnsemble":
    members: list[LoadedRun] = []
    try:
        for member in member_dirs(run_dir):
            members.append(load_run_folder(member, device, backend))
        return _combine_members(run_dir, members)
    except BaseException:  # stop the inference threads of the members loaded so far
        for loaded in members:
            loaded.close()
        raise


def _combine_members(run_dir: Path, members: list[LoadedRun]) -> LoadedEnsemble:
    """The ensemble of loaded ``members``; RunError where they, or the ensemble's stacker, cannot be combined."""
    for member in members:  # the ensemble combines (and was fitted on) its members' uncalibrated probabilities
        member.temperature = 1.0
    if len({member.classes for member in members}) > 1:
        raise RunError(f"{run_dir}: its member runs predict different classes")
    stacker = read_stacker_dict(run_dir)
    try:
        stacker = Stacker.from_dict(stacker) if stacker is not None else None
    except ValueError as error:
        raise RunError(f"{run_dir}/ensemble.json: its stacker cannot be used ({error})") from None
    classes = len(members[0].classes)
    expected = (classes, len(members) * classes + len(LEXICON_SCORES))
    if stacker is not None and stacker.weights.shape != expected:
        raise RunError(f"{run_dir}/ensemble.json: its stacker's weights are {stacker.weights.shape}, its members "
                       f"need {expected} ({len(members)} runs of {classes} classes)")
    ensemble = LoadedEnsemble(members, run_dir, stacker, temperature=read_temperature(run_dir))
    ensemble.decision_offsets = read_decision_offsets(run_dir)
    return ensemble


def read_decision_offsets(run_dir: Path) -> list[float] | None:
    """The offsets of the run's decision rule (None: the most probable class)."""
    data = read_decision_dict(run_dir)
    if data is None:
        return None
    try:
        return DecisionRule.from_dict(data).offsets or None
    except (TypeError, ValueError) as error:
        raise RunError(f"{run_dir}/decision.json is not a decision rule written by mmsent ({error})") from None


def _build_models(config: RunConfig, files: list[Path], target: torch.device):
    """The run's encoders and one model per fold file (on the run's inference thread)."""
    towers = load_towers(config, target, log=lambda message: None)
    models = []
    for path in files:
        model = MultimodalClassifier(config, towers)
        try:
            model.load_state_dict(read_weights(path), strict=True)
        except RuntimeError as error:
            raise RunError(f"{path} does not match the model described by config.json: {error}") from None
        models.append(model.to(target).eval())
    return towers, models
