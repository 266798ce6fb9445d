"""What every predictor offers, whatever runs it: the result of one post (:class:`Prediction`) and the
:class:`Predictor` interface (a data folder, a split, posts in memory). Imports no PyTorch: a run loaded with PyTorch
(:mod:`.predict`) and an exported model (:mod:`.portable`) both implement it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .atomic import atomic_write_text
from .data.dataset import Split, open_data
from .decision import decide
from .errors import InputError

__all__ = ["Prediction", "Predictor", "write_predictions"]


@dataclass
class Prediction:
    """One post's fold-ensemble prediction."""

    label: str
    probabilities: dict[str, float]  # label -> probability, in the run's class order
    modalities_used: list[str]  # "text", "image": what the post gave and the run reads
    image_text: str | None = None  # the text read in the image, for a run that reads it (ocr.enabled)

    @classmethod
    def from_probs(cls, probs: np.ndarray, modalities_used: list[str], classes, offsets=None) -> "Prediction":
        """From one row of class probabilities (C,), columns in ``classes`` order; the label by the decision rule's
        ``offsets`` (None: the most probable class)."""
        return cls(classes[int(decide(np.asarray(probs)[None], offsets)[0])],
                   {name: float(p) for name, p in zip(classes, probs)}, modalities_used)

    def to_dict(self) -> dict:
        extra = {} if self.image_text is None else {"image_text": self.image_text}
        return {"label": self.label, "probabilities": self.probabilities, "modalities_used": self.modalities_used,
                **extra}


class Predictor:
    """What a loaded run and an ensemble of runs share: predictions for a data folder or for posts in memory.

    Subclasses give ``modalities``, ``predict_split`` and ``_batch_probs``."""

    run_dir: Path | None
    decision_offsets: list[float] | None = None  # the run's decision rule (decision.json); None = most probable

    @property
    def modalities(self) -> list[str]:
        raise NotImplementedError

    def labels_of(self, probs: np.ndarray) -> np.ndarray:
        """Label indices (N,) of class probabilities (N, C) by the run's decision rule."""
        return decide(probs, self.decision_offsets)

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names, in the order of every probability row."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop the run's inference thread (a closed run predicts no more)."""
        raise NotImplementedError

    def __enter__(self) -> "Predictor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def prediction(self, probs: np.ndarray, modalities_used: list[str]) -> Prediction:
        """A :class:`Prediction` from one row of this run's class probabilities (C,)."""
        return Prediction.from_probs(probs, modalities_used, self.classes, self.decision_offsets)

    @property
    def fold_count(self) -> int:
        """How many fold models predict."""
        return len(self.models)

    @property
    def description(self) -> str:
        """What predicts, in words (e.g. "5-fold ensemble")."""
        raise NotImplementedError

    def predict_split(self, split: Split, log=print, cache: bool = True) -> np.ndarray:
        """Class probabilities (N, C) for every post of ``split``, in its order, through the feature cache (or, with
        ``cache=False``, the same probabilities computed in memory: for a chunk of a large table)."""
        raise NotImplementedError

    def _batch_probs(self, texts: list, images: list, n: int, image_texts: list[str] | None = None) -> np.ndarray:
        """Class probabilities (N, C) of posts in memory (already checked by ``predict_batch``); ``image_texts``: the
        text read in each image where the caller has it already (:meth:`image_texts`)."""
        raise NotImplementedError

    def predict_folder(self, data_dir, label_file, log=print) -> dict[str, Prediction]:
        """guid -> Prediction for every post that ``label_file`` (a ``guid,tag`` file) names in ``data_dir``."""
        split = open_data(Path(data_dir), "test", test_file=Path(label_file))
        probs = self.predict_split(split, log)
        lacking = {"image": set(split.guids_with("image_unusable")),
                   "text": set(split.guids_with("text_missing", "text_empty"))}
        return {guid: self.prediction(row, [m for m in self.modalities if guid not in lacking[m]])
                for guid, row in zip(split.guids, probs)}

    def predict(self, text: str | None = None, image=None) -> Prediction:
        """One post: ``text`` (None = no text) and ``image`` (a path, bytes, a PIL image, or None)."""
        return self.predict_batch([text], [image])[0]

    def predict_batch(self, texts: list | None = None, images: list | None = None) -> list[Prediction]:
        """Posts given in memory, without the feature cache: texts[i] with images[i] (either list may be None).

        Raises ImageError for an image that cannot be used and ValueError for a post that gives the run nothing
        to read (no text and no image, or only the modality the run does not use).
        """
        n = len(texts if texts is not None else images if images is not None else [])
        texts = [None] * n if texts is None else list(texts)
        images = [None] * n if images is None else list(images)
        if len(texts) != len(images):
            raise ValueError(f"predict_batch: {len(texts)} texts but {len(images)} images")
        if n == 0:
            return []
        used = [self._modalities_used(text, image, i if n > 1 else None) for i, (text, image) in
                enumerate(zip(texts, images))]
        read = self.image_texts(images)  # None for a run that does not read the text in images
        probs = self._batch_probs(texts, images, n, read)  # (N, C)
        predictions = [self.prediction(row, modalities) for row, modalities in zip(probs, used)]
        for prediction, image, text in zip(predictions, images, read or []):
            prediction.image_text = text if image is not None else None
        return predictions

    def image_texts(self, images: list) -> list[str] | None:
        """The text read in each image ("" for none), or None for a run that does not read it."""
        return None

    def explain(self, text: str | None = None, image=None, steps: int | None = None):
        """One post's prediction and why: an :class:`mmsent.explain.Explanation` with a signed score per word of
        ``text`` toward the predicted label, a heat map over ``image`` and the share each modality carries
        (method: :mod:`mmsent.explain`; ``steps``: integrated-gradients steps, default ``explain.STEPS``)."""
        from .explain import STEPS, check_explainable, explain_post

        check_explainable(self)
        if steps is not None and (not isinstance(steps, int) or steps < 1):
            raise InputError(f"steps must be a positive number of integration steps, got {steps!r}")
        return explain_post(self, text, image, steps or STEPS)

    def _modalities_used(self, text, image, index: int | None) -> list[str]:
        given = {"text": bool(text and text.strip()), "image": image is not None}
        used = [m for m in self.modalities if given[m]]
        if not used:
            post = "the post" if index is None else f"post {index}"
            raise InputError(f"{post} gives nothing to predict from: this run reads {' and/or '.join(self.modalities)}")
        return used

    def warm_up(self) -> None:
        """One prediction on a blank post, so that the first real one is not slowed by lazy initialisation."""
        self.predict(text="warm up", image=Image.new("RGB", (8, 8), "white"))


def write_predictions(path: Path, guids: list[str], probs: np.ndarray, classes, offsets=None) -> None:
    """Write ``guid,tag`` rows (the test file's layout), atomically; ``classes`` names the columns of ``probs``,
    ``offsets`` are the decision rule's (None: the most probable class)."""
    rows = ["guid,tag"] + [f"{guid},{classes[int(i)]}" for guid, i in zip(guids, decide(probs, offsets))]
    atomic_write_text(Path(path), "\n".join(rows) + "\n")
