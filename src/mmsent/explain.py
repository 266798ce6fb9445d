"""Why a label: per-word and per-image-region attributions and modality shares of a run's fold ensemble.

Method (Captum's :class:`captum.attr.IntegratedGradients`):

* The inputs attributed are the token features that enter the trainable part of each fold model: what the text
  encoder hands to the text projection (one vector per word piece) and what the image encoder hands to the image
  projection (one vector per cell of the image feature map, or per ViT patch). They come out of the frozen encoders
  (a graph runtime or torch, no gradient needed there) and, for fine-tuned layers, out of each fold's own upper
  layers; so every registered encoder, fusion and model family is explained the same way.
* The attributed function is each fold model's temperature-scaled probability of the explained label (the
  ensemble's prediction), computed as prediction computes it (the loss's probabilities, e.g. renormalised sigmoids
  for focal loss, then the run's temperature). The baseline is all-zero token features for both streams at once,
  so each fold's attributions sum to its probability of the label minus its probability at the baseline
  (completeness); scores are averaged over the folds. A token's score is the sum of its attribution over the feature dimension: positive
  pushes toward the label, negative away from it.
* Word pieces are merged back into the whitespace-separated words of the original text (hashtags, emoji, URLs
  kept as words) through the tokenizer's character offsets in the cleaned text; a word that no token of the model
  reads (removed by the text cleaning, or cut by ``text.max_length``) gets score 0 and ``read: false``.
* Image cells are laid out on their grid (``Tower.token_grid``) over the centre square crop the model sees;
  ``ImageMap.heatmap()`` upsamples the grid bilinearly to the image's resolution, zero outside the crop.
* Modality shares: the ensemble's calibrated probability of the label, again with the image replaced by the model's
  learned missing-image token and with the text replaced by the empty text; each modality's share is the absolute
  drop it causes, normalised over the two.

Deterministic for a given run and post (no sampling; fixed ``steps``).
"""

from __future__ import annotations

import difflib
import io
from dataclasses import dataclass, field

import numpy as np
import torch

from .calibration import EPS
from .data.text import clean_text
from .errors import InputError
from .losses import probabilities

TOWARD, AWAY = (255, 120, 0), (30, 100, 255)  # colours of scores toward the label and away from it (RGB)
STEPS = 32  # integral approximation steps of integrated gradients (one batch of STEPS per fold model)
METHOD = ("Captum IntegratedGradients ({steps} steps, zero baseline) on the token features entering each fold "
          "model's trainable part, target: the temperature-scaled probability of the label, averaged over {folds} "
          "fold model(s)")


@dataclass
class ImageMap:
    """Image-region scores: ``grid`` (rows x columns, signed, toward the label) laid over the centre square crop
    ``crop`` = (left, top, side) in pixels of the image as shown (EXIF rotation applied), ``width`` x ``height``."""

    grid: list[list[float]]
    crop: tuple[float, float, float]
    width: int
    height: int

    def heatmap(self) -> np.ndarray:
        """The scores at the image's resolution (height, width) float32: the grid upsampled bilinearly over the
        crop, 0 outside it."""
        from PIL import Image

        left, top, side = self.crop
        size = max(1, int(round(side)))
        grid = np.asarray(self.grid, dtype=np.float32)
        cells = Image.fromarray(grid, mode="F").resize((size, size), Image.Resampling.BILINEAR)
        out = np.zeros((self.height, self.width), dtype=np.float32)
        x0, y0 = int(round(left)), int(round(top))  # negative where the square is padded beyond the image
        xs, ys = max(0, -x0), max(0, -y0)
        xe, ye = min(size, self.width - x0), min(size, self.height - y0)
        out[y0 + ys:y0 + ye, x0 + xs:x0 + xe] = np.asarray(cells)[ys:ye, xs:xe]
        return out

    def to_dict(self) -> dict:
        return {"grid": self.grid, "crop": list(self.crop), "width": self.width, "height": self.height}


@dataclass
class Explanation:
    """One post's prediction and why. Parts that cannot be computed hold None and say why in ``unavailable``."""

    label: str
    probabilities: dict[str, float]
    modalities_used: list[str]
    words: list[dict] | None = None  # [{"word", "score", "read"}] for every whitespace word, in order
    image: ImageMap | None = None
    modality_shares: dict | None = None  # {"text", "image"} shares, {"without_text", "without_image"} probabilities
    unavailable: dict[str, str] = field(default_factory=dict)  # "words" / "image" / "modality_shares" -> why
    method: str = ""
    image_text: str | None = None  # the text read in the image, for a run that reads it

    def to_dict(self) -> dict:
        return {"label": self.label, "probabilities": self.probabilities, "modalities_used": self.modalities_used,
                "words": self.words, "image": self.image.to_dict() if self.image else None,
                "modality_shares": self.modality_shares,
                "unavailable": {k: f"not available: {v}" for k, v in self.unavailable.items()},
                "method": self.method, **({} if self.image_text is None else {"image_text": self.image_text})}


# ---------------------------------------------------------------- word pieces -> words


def words_of(text: str) -> list[tuple[int, int]]:
    """Character spans of the whitespace-separated words of ``text``."""
    spans, start = [], None
    for i, char in enumerate(text + " "):
        if char.isspace():
            if start is not None:
                spans.append((start, i))
                start = None
        elif start is None:
            start = i
    return spans


def cleaned_char_to_word(text: str, prep) -> tuple[str, list[int]]:
    """The cleaned text the model reads and, for each of its characters, the index of the original word it comes
    from (-1: none). Each word is cleaned on its own to know what it becomes; the cleaned whole text is aligned to
    the joined cleaned words (identical unless cleaning spans words)."""
    spans = words_of(text)
    joined, owner = [], []
    for index, (start, end) in enumerate(spans):
        piece = clean_text(text[start:end], prep)
        if piece:
            if joined:
                joined.append(" ")
                owner.append(-1)
            joined.append(piece)
            owner.extend([index] * len(piece))
    joined_text = "".join(joined)
    cleaned = clean_text(text, prep)
    if cleaned == joined_text:
        return cleaned, owner
    mapping = [-1] * len(cleaned)
    matcher = difflib.SequenceMatcher(None, cleaned, joined_text, autojunk=False)
    for a, b, size in matcher.get_matching_blocks():
        for k in range(size):
            mapping[a + k] = owner[b + k]
    return cleaned, mapping


def merge_pieces(text: str, prep, offsets: list, scores: np.ndarray) -> list[dict]:
    """Per-piece scores (by token position) -> one entry per whitespace word of ``text``, in order."""
    spans = words_of(text)
    _, char_word = cleaned_char_to_word(text, prep)
    totals, read = [0.0] * len(spans), [False] * len(spans)
    for position, span in enumerate(offsets):
        if span is None or position >= len(scores):
            continue
        owners = [char_word[c] for c in range(span[0], min(span[1], len(char_word))) if char_word[c] >= 0]
        if owners:
            word = max(set(owners), key=owners.count)
            totals[word] += float(scores[position])
            read[word] = True
    return [{"word": text[s:e], "score": round(totals[i], 6), "read": read[i]} for i, (s, e) in enumerate(spans)]


# ---------------------------------------------------------------- image geometry


def shown_size(image) -> tuple[int, int]:
    """(width, height) of a post's image as shown, EXIF rotation applied (path, bytes or PIL image)."""
    from pathlib import Path

    from PIL import Image

    from .data.images import open_image

    if isinstance(image, Image.Image):
        opened = image
    else:
        raw = Path(image).read_bytes() if not isinstance(image, (bytes, bytearray, memoryview)) else bytes(image)
        opened = open_image(raw)
    width, height = opened.size
    if opened.getexif().get(0x0112) in (5, 6, 7, 8):  # rotated by a quarter turn
        width, height = height, width
    return width, height


def centre_crop(width: int, height: int, fit: str = "crop") -> tuple[float, float, float]:
    """The square the encoder sees, in original pixels (left, top, side): the centre square that decoding keeps
    (short side resized, then centre-cropped), or with ``fit="pad"`` the square around the whole image (its long
    side; left or top negative where it is padded)."""
    side = min(width, height) if fit == "crop" else max(width, height)
    return (width - side) / 2, (height - side) / 2, float(side)


# ---------------------------------------------------------------- attribution


def tempered_probabilities(loss: str, logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """One model's class probabilities as prediction gives them, differentiably: the loss's probabilities
    (:func:`mmsent.losses.probabilities`), then the temperature as :func:`mmsent.calibration.apply_temperature`
    applies it (softmax of the log-probabilities / T)."""
    probs = probabilities(loss, logits)
    if temperature == 1.0:
        return probs
    return torch.softmax(torch.log(probs.clamp(EPS, 1.0)) / temperature, dim=-1)


def _fold_attributions(model, encoded: dict, label: int, loss: str, temperature: float, steps: int):
    """One fold model: IG scores per text token (Tt,) and per image token (Ti,) (None where absent)."""
    from captum.attr import IntegratedGradients

    text, image = encoded["text"], encoded["image"]
    inputs, baselines = [], []
    if text is not None:
        inputs.append(text[0].detach().float())
    if image is not None:
        inputs.append(image[0].detach().float())
    baselines = [torch.zeros_like(x) for x in inputs]

    def forward(*tokens):
        k, batch = 0, tokens[0].shape[0]
        text_in = image_in = None
        if text is not None:
            text_in = (tokens[k], text[1].expand(batch, -1))
            k += 1
        if image is not None:
            image_in = (tokens[k], image[1].expand(batch, -1), image[2].expand(batch))
        extra = _fixed_inputs(encoded, batch)
        logits = model.forward_from_encoded(text_in, image_in, *extra).float()
        return tempered_probabilities(loss, logits, temperature)

    attributions = IntegratedGradients(forward).attribute(tuple(inputs), baselines=tuple(baselines), target=label,
                                                          n_steps=steps, internal_batch_size=steps)
    out, k = {"text": None, "image": None}, 0
    if text is not None:
        out["text"] = (attributions[k].sum(-1)[0] * text[1][0].float()).detach().cpu().numpy()
        k += 1
    if image is not None:
        out["image"] = attributions[k].sum(-1)[0].detach().cpu().numpy()
    return out


def _fixed_inputs(encoded: dict, batch: int) -> tuple:
    """The inputs that are not attributed (the text read in the image, the lexicon scores), repeated ``batch``
    times: (image_text or None, lexicon or None)."""
    read, lexicon = encoded.get("image_text"), encoded.get("lexicon")
    if read is not None:
        read = (read[0].expand(batch, -1, -1), read[1].expand(batch, -1))
    if lexicon is not None:
        lexicon = lexicon.expand(batch, -1)
    return read, lexicon


def _why_not(tower, given: bool, what: str, other: str) -> str | None:
    """Why one modality's attributions cannot be given (None: they can): the run lacks its tower, the post lacks
    it, or the tower cannot attribute its tokens."""
    if tower is None:
        return f"the run reads {other} only"
    if not given:
        return f"the post has no {what}"
    return tower.tokens_unavailable() or None


def explain_post(run, text: str | None, image, steps: int = STEPS) -> Explanation:
    """Explain one post with a :class:`~mmsent.predict.LoadedRun` (see the module's docstring for the method)."""
    used = run._modalities_used(text, image, None)  # InputError for a post that gives the run nothing
    towers, prep = run.towers, run.config.text_prep
    pixels = towers.image.load(image) if towers.image is not None and image is not None else None
    cleaned = clean_text(text or "", prep) if towers.text is not None else None
    extra = {"image_text": towers.image_text.read(image) if towers.image_text is not None else None,
             "raw_text": text}
    probs, scores, without = run._call(_explain_tensors, run, cleaned, pixels, steps, extra)
    prediction = run.prediction(probs[0], used)  # the same as run.predict(text, image)
    label = run.classes.index(prediction.label)
    has_text, has_image = "text" in used, "image" in used
    explanation = Explanation(prediction.label, prediction.probabilities, prediction.modalities_used,
                              method=METHOD.format(steps=steps, folds=len(run.models)),
                              image_text=extra["image_text"] if image is not None else None)

    reason = _why_not(towers.text, has_text, "text", "images")
    if reason:
        explanation.unavailable["words"] = reason
    else:
        offsets = towers.text.piece_offsets(cleaned)
        if offsets is None:
            explanation.unavailable["words"] = f"the {run.config.text.name} tokenizer gives no character offsets"
        else:
            explanation.words = merge_pieces(text, prep, offsets, scores["text"])

    reason = _why_not(towers.image, has_image, "image", "texts")
    if reason:
        explanation.unavailable["image"] = reason
    else:
        cells = scores["image"]
        grid = towers.image.token_grid(len(cells))
        if grid is None:
            explanation.unavailable["image"] = f"the image encoder's {len(cells)} tokens form no grid of regions"
        else:
            skip, rows, columns = grid
            width, height = shown_size(image)
            explanation.image = ImageMap(np.round(cells[skip:].reshape(rows, columns), 6).tolist(),
                                         centre_crop(width, height, towers.image.fit), width, height)

    _add_modality_shares(explanation, run, has_text and has_image, without, label)
    return explanation


def _add_modality_shares(explanation: Explanation, run, both: bool, without: dict, label: int) -> None:
    """How much the predicted label's probability drops without the text and without the image, as shares."""
    if run.modalities != ["text", "image"]:
        explanation.unavailable["modality_shares"] = f"the run reads {run.modalities[0]} only"
        return
    if not both:
        explanation.unavailable["modality_shares"] = "the post has only one modality"
        return
    p = explanation.probabilities[explanation.label]
    drops = {"text": p - float(without["text"][0, label]), "image": p - float(without["image"][0, label])}
    total = abs(drops["text"]) + abs(drops["image"])
    shares = ({m: abs(d) / total for m, d in drops.items()} if total > 0 else {"text": 0.5, "image": 0.5})
    explanation.modality_shares = {
        "text": round(shares["text"], 6), "image": round(shares["image"], 6),
        "without_text": round(float(without["text"][0, label]), 6),
        "without_image": round(float(without["image"][0, label]), 6)}


def _features(run, cleaned, pixels, extra: dict) -> dict:
    features = {}
    if cleaned is not None:
        features.update(run.towers.text.encode_items([cleaned]))
    if run.towers.image is not None:
        features.update(run.towers.image.encode_items([pixels]))
    if run.towers.image_text is not None:
        features.update(run.towers.image_text.encode_items([extra["image_text"]]))
    if run.towers.lexicon is not None:
        features.update(run.towers.lexicon.encode_items([extra["raw_text"]]))
    return features


def _without(run, features: dict) -> dict:
    """The probabilities (1, C) without the text (and the lexicon scores of it) and without the image (and the
    text read in it)."""
    no_text = dict(features, **run.towers.text.encode_items([""]))
    if run.towers.lexicon is not None:
        no_text.update(run.towers.lexicon.encode_items([None]))
    no_image = dict(features, image_present=torch.zeros_like(features["image_present"]))
    if "ocr_mask" in features:
        no_image["ocr_mask"] = torch.zeros_like(features["ocr_mask"])
    return {"text": run._ensemble(no_text, 1), "image": run._ensemble(no_image, 1)}


def _explain_tensors(run, cleaned, pixels, steps: int, extra: dict):
    """On the run's inference thread: the ensemble's calibrated probabilities (1, C), the fold-averaged token
    scores toward its label {"text": (Tt,), "image": (Ti,)}, and the probabilities (1, C) with the text emptied
    and with the image replaced by the missing-image token (None unless the run reads both)."""
    with torch.inference_mode():
        features = _features(run, cleaned, pixels, extra)
        probs = run._ensemble(features, 1)
        without = None
        if cleaned is not None and run.towers.image is not None:
            without = _without(run, features)
        on_device = {k: v.to(run.device) for k, v in features.items()}
        encoded = [model.encoder_outputs(on_device) for model in run.models]
    encoded = [{k: v.clone() if isinstance(v, torch.Tensor) else tuple(t.clone() for t in v) if v is not None
                else None for k, v in e.items()} for e in encoded]
    for e in encoded:  # right padding cannot change the real tokens' outputs: attribute the real ones only
        if e["text"] is not None:
            length = max(1, int(e["text"][1][0].sum()))
            e["text"] = (e["text"][0][:, :length], e["text"][1][:, :length])
    label = int(run.labels_of(probs)[0])
    totals = {"text": None, "image": None}
    threads = torch.get_num_threads()
    # One thread for the many small backward passes: on a CPU shared with other processes, a team of OpenMP
    # threads made an explanation take several times longer and vary tenfold (benchmarks/README.md).
    torch.set_num_threads(1)
    try:
        with torch.enable_grad():
            for model, enc in zip(run.models, encoded):
                fold = _fold_attributions(model, enc, label, run.config.train.loss, run.temperature, steps)
                for kind, value in fold.items():
                    if value is not None:
                        totals[kind] = value if totals[kind] is None else totals[kind] + value
    finally:
        torch.set_num_threads(threads)
    return probs, {k: (v / len(run.models) if v is not None else None) for k, v in totals.items()}, without


# ---------------------------------------------------------------- rendering


def overlay_png(image, image_map: ImageMap, max_side: int = 320) -> bytes:
    """The image with the heat map over it (orange: toward the label, blue: away), as PNG bytes, at most
    ``max_side`` pixels a side."""
    from pathlib import Path

    from PIL import Image, ImageOps

    from .data.images import open_image

    if not isinstance(image, Image.Image):
        image = open_image(Path(image).read_bytes() if not isinstance(image, (bytes, bytearray)) else bytes(image))
    shown = ImageOps.exif_transpose(image).convert("RGB")
    heat = image_map.heatmap()
    scale = float(np.abs(heat).max()) or 1.0
    colour = np.zeros((*heat.shape, 4), dtype=np.float32)
    colour[heat > 0, :3] = TOWARD
    colour[heat < 0, :3] = AWAY
    colour[..., 3] = np.abs(heat) / scale * 170
    overlay = Image.fromarray(colour.astype(np.uint8), "RGBA")
    composed = Image.alpha_composite(shown.convert("RGBA"), overlay).convert("RGB")
    composed.thumbnail((max_side, max_side))
    buffer = io.BytesIO()
    composed.save(buffer, format="PNG")
    return buffer.getvalue()


def coloured_words(words: list[dict], tty: bool) -> str:
    """The words with their scores: coloured backgrounds on a terminal (orange toward the label, blue away), else
    ``word(+0.123)``."""
    scale = max([abs(w["score"]) for w in words] + [1e-12])
    out = []
    for word in words:
        if not tty:
            out.append(f"{word['word']}({word['score']:+.3f})" if word["read"] else f"{word['word']}(-)")
            continue
        level = min(5, int(abs(word["score"]) / scale * 5.999))
        if not word["read"] or level == 0:
            out.append(word["word"])
        else:
            toward = (230, 223, 216, 209, 202)[level - 1]  # xterm-256 colours, paler to stronger
            away = (195, 153, 111, 69, 27)[level - 1]
            out.append(f"\033[30;48;5;{toward if word['score'] > 0 else away}m{word['word']}\033[0m")
    return " ".join(out)


def check_explainable(run) -> None:
    """InputError for a predictor whose explanations are not computed (an ensemble of runs)."""
    if not hasattr(run, "towers"):
        raise InputError("explanations are computed for one run, not for an ensemble of runs: explain one of its "
                         "members")
