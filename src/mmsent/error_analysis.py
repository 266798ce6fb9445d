"""The report's error analysis of a run: its out-of-fold confusion pairs with their most confident mistakes
explained, and the words most often pushing toward each class (:mod:`mmsent.explain`).

Each post is explained by the fold model that held it out, as its out-of-fold prediction was made (the other fold
models trained on it), so the label explained is the out-of-fold one; the folds are rebuilt from the data folder,
the run's fold count and seed, and the data must be the run's own (its fingerprint is checked).
"""

from __future__ import annotations

import base64
import html
import re
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np

from .explain import overlay_png
from .runfolder import LEGACY_FOLD_SCHEME, data_fingerprint, fold_dirs, read_oof, read_protocol, trained_config
from .errors import InputError
from .progress import progress

MISTAKES_PER_PAIR = 3
TOP_WORDS = 12
MIN_POSTS = 2  # a word pushing toward a class in fewer posts than this is not listed


def _oof_rows(run: Path) -> tuple[list[dict], tuple[str, ...]]:
    """The run's out-of-fold rows ({"guid", "label", "probs" (C,)}) and its class names."""
    oof = read_oof(run)
    return [{"guid": guid, "label": label, "probs": probs}
            for guid, label, probs in zip(oof.guids, oof.labels, oof.probs)], oof.classes


def _fold_of(run: Path, data: Path, config) -> tuple[dict[str, int] | None, object, str]:
    """guid -> the fold that held it out, the split, or (None, None, why not)."""
    from .data.dataset import open_data
    from .data.folds import stratified_folds

    if len(fold_dirs(run)) != config.train.folds or (read_protocol(run) or {}).get("name") == "fixed_split":
        return None, None, "the run is not a k-fold cross-validation run with every fold's weights"
    if config.train.fold_scheme == LEGACY_FOLD_SCHEME:
        return None, None, "the run's folds were drawn by an earlier version of mmsent, which this one cannot rebuild"
    split = open_data(data, "train", config.data)  # read as the run read it: its format options and labels
    if data_fingerprint(run) != split.fingerprint():
        return None, None, f"{data} is not the data this run was trained on"
    folds = stratified_folds(split.labels, config.train.folds, config.train.seed)
    return {split.guids[i]: k for k, (_, val_idx) in enumerate(folds) for i in val_idx}, split, ""


def _post(split, guid: str):
    from .data.text import decode_text

    raw = split.read_text_bytes(guid)
    text = decode_text(raw).text if raw is not None else None
    image = split.read_image_bytes(guid) if guid not in set(split.guids_with("image_unusable")) else None
    return (text if text and text.strip() else None), image


def words_html(words: list[dict] | None, why: str = "") -> str:
    """Words highlighted by score (orange toward the label, blue away), as an HTML fragment."""
    from .explain import AWAY, TOWARD

    if words is None:
        return f"<i>{html.escape(why)}</i>"
    scale = max([abs(w["score"]) for w in words] + [1e-12])
    spans = []
    for word in words:
        colour = TOWARD if word["score"] >= 0 else AWAY
        alpha = abs(word["score"]) / scale * 0.85 if word["read"] else 0
        spans.append(f"<span title='{word['score']:+.3f}' style='background:rgba({colour[0]},{colour[1]},"
                     f"{colour[2]},{alpha:.3f});padding:1px 2px;border-radius:3px'>{html.escape(word['word'])}</span>")
    return " ".join(spans)


def words_markdown(words: list[dict] | None, why: str = "") -> str:
    if words is None:
        return f"_{why}_"
    top = sorted((w for w in words if w["read"]), key=lambda w: -w["score"])[:3]
    return " ".join(w["word"] for w in words) + " (strongest: " + ", ".join(
        f"{w['word']} {w['score']:+.3f}" for w in top) + ")"


def _normalised(word: str) -> str:
    return re.sub(r"^[^\w#@]+|[^\w]+$", "", word.lower())


def error_analysis_items(run_dir: Path, data: Path, sample: int, log=print) -> list[tuple[str, object]]:
    """Report items (see :mod:`mmsent.report`) of the error-analysis section of ``run_dir`` on its data ``data``;
    ``sample`` posts (evenly spaced; 0 = all) give the words pushing toward each class."""
    from .predict import load_run_folder

    config = trained_config(run_dir)
    fold_of, split, why = _fold_of(run_dir, data, config)
    if fold_of is None:
        return [("text", f"Error analysis not available: {why}.")]
    rows, classes = _oof_rows(run_dir)
    with load_run_folder(run_dir, device="cpu") as run:
        fold_runs = [replace(run, models=[model]) for model in run.models]  # one fold model each, one thread
        items = [("text", "Each post is explained by the fold model that held it out (its out-of-fold prediction); "
                          "words and image regions are coloured orange where they pushed toward the predicted "
                          "label and blue where they pushed away (integrated gradients, mmsent.explain); the "
                          "modality shares say how much the prediction drops without the text and without the "
                          "image.")]
        pairs = _mistake_pairs(rows, classes)
        items += _pairs_items(rows, pairs, classes)
        items.append(("html", _mistake_blocks(pairs, split, fold_runs, fold_of, run_dir.name)))
        items += _words_items(rows, split, fold_runs, fold_of, run.modalities, classes, sample)
    return items


def _mistake_pairs(rows: list[dict], classes) -> dict[tuple[str, str], list[tuple[float, str]]]:
    """(true, predicted) -> [(confidence, guid)] of every out-of-fold mistake."""
    pairs = defaultdict(list)
    for row in rows:
        predicted = classes[int(np.argmax(row["probs"]))]
        if predicted != row["label"]:
            pairs[(row["label"], predicted)].append((float(row["probs"].max()), row["guid"]))
    return pairs


def _pairs_items(rows: list[dict], pairs: dict, classes) -> list[tuple[str, object]]:
    class_sizes = {name: sum(row["label"] == name for row in rows) for name in classes}
    table = [{"true": t, "predicted": p, "posts": len(v), "share of the true class": f"{len(v) / class_sizes[t]:.1%}"}
             for (t, p), v in sorted(pairs.items(), key=lambda kv: -len(kv[1]))]
    return [("text", "Out-of-fold confusion pairs (true label, predicted label), most frequent first:"),
            ("table", table)]


def _mistake_blocks(pairs: dict, split, fold_runs, fold_of: dict, run_name: str) -> tuple[str, str, dict]:
    """(HTML, Markdown, figure files) of the most confident mistakes of each pair, explained."""
    chosen = [(pair, sorted(v, reverse=True)[:MISTAKES_PER_PAIR]) for pair, v in
              sorted(pairs.items(), key=lambda kv: -len(kv[1]))]
    todo = [(pair, confidence, guid) for pair, mistakes in chosen for confidence, guid in mistakes]
    blocks_html, blocks_md, files, current = [], [], {}, None
    for (true, predicted), confidence, guid in progress(todo, desc="explaining mistakes", unit="post"):
        if (true, predicted) != current:
            current = (true, predicted)
            heading = f"true {true}, predicted {predicted} ({len(pairs[current])} posts): the most confident"
            blocks_html.append(f"<h3>{html.escape(heading)}</h3>")
            blocks_md += [f"### {heading}", ""]
        text, image = _post(split, guid)
        try:
            explanation = fold_runs[fold_of[guid]].explain(text=text, image=image)
        except InputError as error:  # nothing the run reads (e.g. an image-only run, an unusable image)
            blocks_html.append(f"<p>post {html.escape(guid)}: {html.escape(str(error))}</p>")
            blocks_md += [f"post {guid}: {error}", ""]
            continue
        block_html, block_md, figure = _mistake_block(explanation, image, guid, predicted, confidence,
                                                      fold_of[guid], run_name)
        blocks_html.append(block_html)
        blocks_md += block_md
        files.update(figure)
    return "\n".join(blocks_html), "\n".join(blocks_md), files


def _mistake_block(explanation, image, guid: str, predicted: str, confidence: float, fold: int,
                   run_name: str) -> tuple[str, list[str], dict]:
    """One explained mistake: its HTML, its Markdown lines and its heat-map file (if it has an image)."""
    unavailable = explanation.to_dict()["unavailable"]
    shares = explanation.modality_shares
    shares_text = (f"text {shares['text']:.0%}, image {shares['image']:.0%}" if shares
                   else unavailable.get("modality_shares", ""))
    thumb, md, files = "", [], {}
    if explanation.image is not None:
        png = overlay_png(image, explanation.image, max_side=180)
        name = f"figures/mistake_{run_name}_{guid}.png"
        files[name] = png
        thumb = (f"<img style='width:180px;display:inline;margin:0' alt='post {guid} with its heat map' "
                 f"src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
        md.append(f"![post {guid}]({name})")
    elif image is None:
        thumb = "<i>no image</i>"
    block = ("<div style='display:flex;gap:14px;align-items:flex-start;margin:.6em 0;border-top:1px solid #eee;"
             f"padding-top:.6em'><div style='flex:none'>{thumb}</div><div><b>post {html.escape(guid)}</b>: "
             f"P({html.escape(predicted)}) {confidence:.3f} out of fold (fold {fold + 1})<br>"
             f"{words_html(explanation.words, unavailable.get('words', ''))}<br>{_read_html(explanation)}"
             f"<small>modality shares: {html.escape(shares_text)}</small></div></div>")
    read = f"; text in the image: {explanation.image_text!r}" if explanation.image_text else ""
    md += [f"post {guid}, P({predicted}) {confidence:.3f}: "
           f"{words_markdown(explanation.words, unavailable.get('words', ''))}{read}; modality shares: {shares_text}",
           ""]
    return block, md, files


def _read_html(explanation) -> str:
    """The text read in the post's image, for a run that reads it ("" otherwise)."""
    if not explanation.image_text:
        return ""
    return f"<small>text in the image: <q>{html.escape(explanation.image_text)}</q></small><br>"


def _words_items(rows: list[dict], split, fold_runs, fold_of: dict, modalities: list[str], classes,
                 sample: int) -> list[tuple[str, object]]:
    """The words pushing toward each predicted class over ``sample`` evenly spaced posts (0 = all)."""
    by_guid = {row["guid"]: row for row in rows if row["guid"] in fold_of}
    guids = list(by_guid)
    if sample and sample < len(guids):
        guids = [guids[int(i)] for i in np.linspace(0, len(guids) - 1, sample)]
    counts = {name: defaultdict(int) for name in classes}
    totals = {name: defaultdict(float) for name in classes}
    for guid in progress(guids, desc="explaining posts", unit="post"):
        text, image = _post(split, guid)
        if text is None or (image is None and "text" not in modalities):
            continue
        explanation = fold_runs[fold_of[guid]].explain(text=text, image=image)
        for word in explanation.words or []:
            key = _normalised(word["word"])
            if word["read"] and word["score"] > 0 and key:
                counts[explanation.label][key] += 1
                totals[explanation.label][key] += word["score"]
    text = (f"Words pushing toward each predicted class, over {len(guids)} posts "
            f"({'all' if len(guids) == len(by_guid) else 'evenly spaced'} out-of-fold posts; "
            "lowercased, punctuation around them removed): ranked by their total push (the sum of "
            "their positive scores toward the label predicted), shown as (posts where the word "
            f"pushed toward it, mean score there); words pushing in fewer than {MIN_POSTS} posts are "
            "left out. Frequent words add up many small pushes; the mean tells them apart.")
    return [("text", text), ("table", _top_words_table(counts, totals, classes))]


def _top_words_table(counts: dict, totals: dict, classes) -> list[dict]:
    table = []
    for rank in range(TOP_WORDS):
        row = {"rank": rank + 1}
        for name in classes:
            top = sorted(((w, c) for w, c in counts[name].items() if c >= MIN_POSTS),
                         key=lambda kv: (-totals[name][kv[0]], -kv[1], kv[0]))
            if rank < len(top):
                word, count = top[rank]
                row[name] = f"{word} ({count}, mean {totals[name][word] / count:+.3f})"
            else:
                row[name] = ""
        table.append(row)
    return table
