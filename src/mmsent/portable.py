"""Predicting from an exported model folder (``mmsent export``) with ONNX Runtime, tokenizers, NumPy and Pillow only.

An export holds everything prediction needs: the frozen encoders as ONNX graphs, their tokenizer files and
preprocessing settings, one ONNX graph per member run taking the encoders' outputs and giving every fold's logits
stacked (B, K, C), how the members are combined, the temperature and the decision rule, all described by
``MODEL/mmsent-export.json`` (:data:`MANIFEST_FILE`). This module imports no PyTorch (nor transformers, scikit-learn,
SciPy or pandas): a base install (``pip install mmsent``) predicts and serves with it.

The arithmetic is the run's: texts cleaned and tokenized as at training time, images decoded by
:mod:`mmsent.data.images`, encoder outputs rounded to float16 as the feature cache stores them, class probabilities
as the run's loss reads logits (softmax, or sigmoid scores renormalised for the focal loss), averaged over folds,
combined over member runs (mean, or the stacker over log-probabilities and VADER's scores), then the temperature.
A run that reads lexicon scores (``lexicon.enabled``) gets them from the same lexicons, computed in Python.
"""

from __future__ import annotations

import json
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .calibration import apply_temperature
from .config import TextPrepConfig
from .data.dataset import Split
from .data.images import ImageError, load_image
from .data.text import clean_text, decode_text
from .errors import UserError
from .prediction import Predictor
from .progress import progress
from .runfolder import RunError

MANIFEST_FILE = "mmsent-export.json"
FORMAT = "mmsent-export"
FORMAT_VERSION = 1
BATCH_SIZE = 32  # posts per batch through the encoders and the fold graphs
IMAGE_CHUNK = 1  # images per run of the image graph: one at a time keeps its activations in the CPU's cache
PREFETCH = 2  # batches of images decoded and encoded ahead of the one whose texts and folds run
COMBINE_RULES = ("single", "mean", "stack")
DECISION_RULES = (None, "offsets")  # None: the most probable class; offsets: argmax of log p + per-class offsets


class ExplainUnavailable(UserError, NotImplementedError):
    """Explanations need the run folder and PyTorch (integrated gradients), which an exported model leaves out."""


def is_export(folder) -> bool:
    """Whether ``folder`` holds an exported model (its manifest)."""
    return (Path(folder) / MANIFEST_FILE).is_file()


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers narrow), not all the machine's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no affinity on this platform
        return os.cpu_count() or 1


def ort_graph(path: Path, threads: int | None = None):
    """An ONNX Runtime InferenceSession on the CPU with every graph optimisation and one intra-op thread per core."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or usable_cores()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # decoding threads need the cores
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def half_rounded(array: np.ndarray) -> np.ndarray:
    """float32 values rounded to float16, as the feature cache stores encoder outputs."""
    return np.asarray(array, dtype=np.float32).astype(np.float16).astype(np.float32)


def masked_mean(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(N, T, D), (N, T) -> (N, D): the mean over real tokens (as :func:`mmsent.layers.masked_mean`)."""
    weights = mask[..., None].astype(np.float32)
    return (tokens * weights).sum(1) / np.maximum(weights.sum(1), 1.0)


class TextEncoder:
    """A frozen text encoder: cleaned texts -> text_hidden (B, T, D) and text_mask (B, T)."""

    def __init__(self, folder: Path, spec: dict):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(folder / spec["tokenizer"]))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(int(spec["max_length"]))
        self.pad_id, self.pooled = int(spec["pad_id"]), bool(spec["pooled"])
        self.prep = TextPrepConfig(**spec["text_prep"])
        self.graph = ort_graph(folder / spec["graph"])
        self.used = {item.name for item in self.graph.get_inputs()}

    def clean(self, raw_texts: list) -> list[str]:
        return [clean_text(text or "", self.prep) for text in raw_texts]

    def lengths(self, cleaned: list[str]) -> list[int]:
        """The number of tokens of each cleaned text (what a batch is padded to the longest of)."""
        return [len(encoding.ids) for encoding in self.tokenizer.encode_batch(cleaned)]

    def encode(self, cleaned: list[str]) -> dict[str, np.ndarray]:
        ids = [encoding.ids for encoding in self.tokenizer.encode_batch(cleaned)]
        width = max(1, max(len(row) for row in ids))
        input_ids = np.full((len(ids), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for i, row in enumerate(ids):
            input_ids[i, :len(row)], mask[i, :len(row)] = row, 1
        feeds = {"input_ids": input_ids, "attention_mask": mask}
        hidden = half_rounded(self.graph.run(None, {k: v for k, v in feeds.items() if k in self.used})[0])
        mask = mask.astype(bool)
        if self.pooled:
            return {"text_hidden": half_rounded(masked_mean(hidden, mask)[:, None]),
                    "text_mask": np.ones((len(ids), 1), dtype=bool)}
        return {"text_hidden": hidden, "text_mask": mask}


class ImageEncoder:
    """A frozen image encoder: decoded (S, S, 3) uint8 images (None: missing) -> image_input and image_present."""

    def __init__(self, folder: Path, spec: dict):
        self.size, self.output = int(spec["size"]), spec["output"]
        self.graph = ort_graph(folder / spec["graph"])
        self.input_name = self.graph.get_inputs()[0].name

    def encode(self, images: list) -> dict[str, np.ndarray]:
        blank = np.zeros((self.size, self.size, 3), dtype=np.uint8)
        pixels = np.stack([blank if image is None else image for image in images])  # (B, S, S, 3)
        out = np.concatenate([self.graph.run(None, {self.input_name: pixels[i:i + IMAGE_CHUNK]})[0]
                              for i in range(0, len(pixels), IMAGE_CHUNK)])  # (B, C, h, w)
        if self.output != "map":
            out = out.reshape(out.shape[0], out.shape[1], -1).transpose(0, 2, 1)  # (B, h*w, C)
            if self.output == "pooled":
                out = out.mean(1, keepdims=True)  # (B, 1, C)
        return {"image_input": half_rounded(out), "image_present": np.array([i is not None for i in images])}


class LexiconScores:
    """The lexicon scores of posts' raw texts (:func:`mmsent.lexicon.lexicon_scores_of_raw`) -> lexicon (B, K)."""

    def __init__(self, folder: Path, spec: dict):
        from .lexicon import SCORES

        if list(spec.get("scores", [])) != list(SCORES):
            raise RunError(f"{folder} was exported with the lexicon scores {spec.get('scores')}; this mmsent "
                           f"computes {list(SCORES)}: export the run again with this version")

    def encode(self, raw_texts: list) -> dict[str, np.ndarray]:
        from .lexicon import lexicon_scores_of_raw

        return {"lexicon": lexicon_scores_of_raw(list(raw_texts)).astype(np.float32)}


@dataclass
class Member:
    """One exported run: its encoders (names in the manifest) and the graph of its fold ensemble."""

    encoders: dict[str, str]  # modality -> encoder name
    folds: int
    loss: str
    inputs: list[str]
    graph: object = field(repr=False)  # the ONNX Runtime InferenceSession

    def probabilities(self, features: dict[str, dict[str, np.ndarray]]) -> np.ndarray:
        """Fold-averaged class probabilities (B, C) from the features of every encoder (by encoder name)."""
        feeds = {}
        for modality, name in self.encoders.items():
            feeds.update(features[name])
        logits = self.graph.run(None, {name: feeds[name] for name in self.inputs})[0].astype(np.float64)  # (B,K,C)
        if self.loss == "focal":
            scores = 1.0 / (1.0 + np.exp(-logits))
            probs = scores / np.maximum(scores.sum(-1, keepdims=True), 1e-12)
        else:
            shifted = np.exp(logits - logits.max(-1, keepdims=True))
            probs = shifted / shifted.sum(-1, keepdims=True)
        return probs.mean(1).astype(np.float32)


class ExportedModel(Predictor):
    """An exported run or ensemble, loaded for prediction (``mmsent.load_run(MODEL)``). Safe to share between
    threads: ONNX Runtime's InferenceSession may be run concurrently."""

    def __init__(self, folder: Path, manifest: dict, encoders: dict, members: list[Member]):
        self.run_dir, self.manifest = folder, manifest
        self.encoders, self.members = encoders, members
        self.temperature = float(manifest.get("temperature", 1.0))
        self.decision_offsets = (manifest.get("decision") or {}).get("offsets")
        self.combine = manifest["combine"]
        self._decoder = ThreadPoolExecutor(PREFETCH, thread_name_prefix="mmsent-decode")

    @property
    def modalities(self) -> list[str]:
        return [m for m in ("text", "image") if any(m in member.encoders for member in self.members)]

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.manifest["labels"])

    @property
    def fold_count(self) -> int:
        return sum(member.folds for member in self.members)

    def close(self) -> None:
        self._decoder.shutdown(wait=True)

    @property
    def description(self) -> str:
        calibrated = f", temperature {self.temperature:.3f}" if self.temperature != 1.0 else ", uncalibrated"
        if len(self.members) == 1:
            what = "one model" if self.fold_count == 1 else f"{self.fold_count}-fold ensemble"
        else:
            stacked = ", stacked with VADER's lexicon scores" if self.combine["rule"] == "stack" else ""
            what = f"ensemble of {len(self.members)} runs, {self.fold_count} fold models{stacked}"
        return f"exported {what}{calibrated}"

    def explain(self, text=None, image=None, steps=None):
        raise ExplainUnavailable("explanations need the run folder and the training extras (pip install "
                                 "'mmsent[train]'): an exported model predicts only")

    def _image_sizes(self) -> list[int]:
        return sorted({encoder.size for encoder in self.encoders.values() if isinstance(encoder, ImageEncoder)})

    def _probabilities(self, cleaned: dict[str, list[str]], images: dict[int, list], raw_texts,
                       features: dict | None = None) -> np.ndarray:
        """Class probabilities (B, C) of one batch: cleaned texts per text encoder, decoded images per size
        (``features``: the outputs of encoders already run, by encoder name)."""
        features = dict(features or {})
        for name, encoder in self.encoders.items():
            if name in features:
                continue
            if isinstance(encoder, TextEncoder):
                features[name] = encoder.encode(cleaned[name])
            elif isinstance(encoder, LexiconScores):
                features[name] = encoder.encode(raw_texts())
            else:
                features[name] = encoder.encode(images[encoder.size])
        member_probs = [member.probabilities(features) for member in self.members]
        rule = self.combine["rule"]
        if rule == "stack":
            from .stacking import Stacker, lexicon_scores_of_raw, stack_inputs

            stacker = Stacker.from_dict(self.combine["stacker"])
            combined = stacker.probabilities(stack_inputs(member_probs, lexicon_scores_of_raw(raw_texts())))
        else:
            combined = np.mean(member_probs, axis=0)
        return apply_temperature(combined, self.temperature)

    def _batch_probs(self, texts, images, n, image_texts=None):  # an export reads no text in images
        sizes = self._image_sizes()
        decoded = {size: list(self._decoder.map(lambda image, s=size: None if image is None else load_image(image, s),
                                                images)) for size in sizes}
        cleaned = {name: encoder.clean(texts) for name, encoder in self.encoders.items()
                   if isinstance(encoder, TextEncoder)}
        return self._probabilities(cleaned, decoded, lambda: texts)

    def _decode_split(self, split: Split, index: list[int]) -> dict[int, list]:
        """The images of ``split``'s posts at ``index``, per image size: (S, S, 3) arrays, or (None, reason)."""
        out = {}
        for size in self._image_sizes():
            rows = []
            for i in index:
                raw = split.read_image_bytes(split.records[i].guid)
                if raw is None:
                    rows.append((None, "image file missing"))
                    continue
                try:
                    rows.append((load_image(raw, size), ""))
                except ImageError as error:
                    rows.append((None, str(error)))
            out[size] = rows
        return out

    def _image_features(self, split: Split, index: list[int]) -> tuple[dict[int, list], dict[str, dict]]:
        """The images of ``split``'s posts at ``index`` decoded (as :meth:`_decode_split`) and through the image
        encoders: (decoded rows per size, features per image encoder name)."""
        decoded = self._decode_split(split, index)
        features = {name: encoder.encode([image for image, _ in decoded[encoder.size]])
                    for name, encoder in self.encoders.items() if isinstance(encoder, ImageEncoder)}
        return decoded, features

    def predict_split(self, split: Split, log=print, cache: bool = True) -> np.ndarray:
        """Class probabilities (N, C) of every post of ``split`` (no feature cache: ``cache`` is ignored). Images
        are decoded and encoded in threads a few batches ahead, while this thread encodes the texts and runs the
        fold graphs."""
        n = len(split.records)
        cleaned = {name: split.texts(encoder.prep) for name, encoder in self.encoders.items()
                   if isinstance(encoder, TextEncoder)}
        first = next((name for name in cleaned), None)  # batches of texts of similar token counts: little padding
        lengths = self.encoders[first].lengths(cleaned[first]) if first is not None else [0] * n
        order = sorted(range(n), key=lambda i: lengths[i])
        batches = [order[i:i + BATCH_SIZE] for i in range(0, n, BATCH_SIZE)]
        probs = np.zeros((n, len(self.classes)), dtype=np.float32)
        pending = deque()
        ahead = iter(batches)
        for index in ahead:
            pending.append((index, self._decoder.submit(self._image_features, split, index)))
            if len(pending) > PREFETCH:
                break
        for _ in progress(range(len(batches)), desc="predict", unit="batch", quiet=len(batches) < 2):
            index, decoding = pending.popleft()
            following = next(ahead, None)
            if following is not None:
                pending.append((following, self._decoder.submit(self._image_features, split, following)))
            decoded, image_features = decoding.result()
            images = self._report_images(split, index, decoded)
            probs[index] = self._probabilities(
                {name: [texts[i] for i in index] for name, texts in cleaned.items()}, images,
                lambda: [decode_text(raw).text if raw is not None else None
                         for raw in (split.read_text_bytes(split.records[i].guid) for i in index)], image_features)
        return probs

    @staticmethod
    def _report_images(split: Split, index: list[int], decoded: dict[int, list]) -> dict[int, list]:
        """Warn about the unusable images of a batch (once, whatever the sizes); the arrays per size."""
        for size, rows in decoded.items():
            for i, (_, reason) in zip(index, rows):
                if reason:
                    split.warn(split.records[i].image_where, f"{reason}; using text only", "image_unusable")
            break
        return {size: [image for image, _ in rows] for size, rows in decoded.items()}


def read_manifest(folder: Path) -> dict:
    """The export's manifest; RunError if it is not one this version reads."""
    path = Path(folder) / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunError(f"{path} is not readable JSON ({type(error).__name__}); export the run again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise RunError(f"{path} is not the manifest of an exported mmsent model")
    if manifest.get("version") != FORMAT_VERSION:
        raise RunError(f"{folder} was exported in format version {manifest.get('version')!r}; this mmsent reads "
                       f"version {FORMAT_VERSION}: export the run again with this version")
    if manifest.get("combine", {}).get("rule") not in COMBINE_RULES:
        raise RunError(f"{path}: unknown combination rule {manifest.get('combine')!r}")
    decision = manifest.get("decision")
    if (decision["rule"] if isinstance(decision, dict) else decision) not in DECISION_RULES:
        raise RunError(f"{path}: its decision rule {manifest['decision']!r} is not one this mmsent applies; "
                       "upgrade mmsent")
    return manifest


def load_export(folder, device: str = "auto", backend: str | None = None) -> ExportedModel:
    """Load an exported model folder for prediction on the CPU (ONNX Runtime)."""
    folder = Path(folder)
    if device not in ("auto", "cpu"):
        raise RunError(f"an exported model runs on the CPU with ONNX Runtime; --device {device} needs the run "
                       "folder it came from")
    if backend not in (None, "auto", "onnx"):
        raise RunError(f"an exported model runs its graphs with ONNX Runtime; --backend {backend} needs the run "
                       "folder it came from")
    manifest = read_manifest(folder)
    missing = [spec[key] for spec in manifest["encoders"].values() for key in ("graph", "tokenizer") if key in spec]
    missing += [member["graph"] for member in manifest["members"]]
    missing = [name for name in missing if not (folder / name).is_file()]
    if missing:
        raise RunError(f"{folder} is an incomplete export: missing {', '.join(missing)}")
    kinds = {"text": TextEncoder, "image": ImageEncoder, "lexicon": LexiconScores}
    encoders = {name: kinds[spec["kind"]](folder, spec) for name, spec in manifest["encoders"].items()}
    members = [Member(member["encoders"], int(member["folds"]), member["loss"], list(member["inputs"]),
                      ort_graph(folder / member["graph"])) for member in manifest["members"]]
    return ExportedModel(folder, manifest, encoders, members)
