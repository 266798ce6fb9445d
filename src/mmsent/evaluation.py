"""Held-out evaluation: a fixed train / validation / test split of a labelled file, and a run scored on a labelled set.

``mmsent split`` cuts a labelled file into stratified parts (8:1:1 by default, the protocol of papers on MVSA)::

    SPLIT/train.txt  SPLIT/val.txt  SPLIT/test.txt   guid,tag files naming posts of the data folder
    SPLIT/split.json                                  the ratios, the seed, the counts and the source file

``mmsent evaluate`` predicts a labelled file with a run (its fold ensemble, calibrated) and writes::

    RUN/evaluations/<file stem>.json   accuracy, weighted and macro F1, per-class precision / recall / F1 / support,
                                       the confusion matrix (rows: true, columns: predicted), ECE of the probabilities
    RUN/evaluations/<file stem>.md     the same as Markdown

The metrics come from scikit-learn (``accuracy_score``, ``precision_recall_fscore_support``, ``confusion_matrix``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .config import ConfigError, run_labels
from .atomic import atomic_write_json, atomic_write_text
from .metrics import classification_metrics
from .runfolder import EVALUATIONS_DIR, is_ensemble, is_finished, member_dirs, read_oof

SPLIT_NAMES = ("train", "val", "test")


def parse_ratios(text: str) -> tuple[float, float, float]:
    """``"8,1,1"`` -> (0.8, 0.1, 0.1): train, validation and test shares (any positive scale)."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 3 or min(values) <= 0:
        raise ConfigError(f"--ratios expects three positive numbers TRAIN,VAL,TEST such as 8,1,1, got {text!r}")
    total = sum(values)
    return tuple(v / total for v in values)


def make_split(labels: list[int], ratios: tuple[float, float, float], seed: int) -> dict[str, np.ndarray]:
    """Stratified indices of the train / val / test parts (scikit-learn's ``train_test_split``, twice)."""
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    n, classes = len(labels), len(np.unique(labels))
    n_test = max(classes, int(round(n * ratios[2])))
    n_val = max(classes, int(round(n * ratios[1])))
    if n - n_test - n_val < classes:
        raise ConfigError(f"{n} posts are too few for a stratified split with every class in every part")
    index = np.arange(n)
    try:
        rest, test = train_test_split(index, test_size=n_test, stratify=labels, random_state=seed)
        train, val = train_test_split(rest, test_size=n_val, stratify=labels[rest], random_state=seed)
    except ValueError as error:
        raise ConfigError(f"cannot split {n} posts stratified at these ratios: {error}") from None
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def write_split(split, out_dir: Path, ratios: tuple[float, float, float], seed: int, source: Path) -> dict:
    """Write SPLIT/train.txt, val.txt, test.txt (``guid,tag``) and split.json; returns split.json's content."""
    out_dir = Path(out_dir)
    existing = [name for name in SPLIT_NAMES if (out_dir / f"{name}.txt").exists()]
    if existing:
        raise ConfigError(f"{out_dir} already holds {', '.join(n + '.txt' for n in existing)}; choose another --out")
    parts = make_split(split.labels, ratios, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, index in parts.items():
        rows = ["guid,tag"] + [f"{split.guids[i]},{split.label_names[split.labels[i]]}" for i in index]
        atomic_write_text(out_dir / f"{name}.txt", "\n".join(rows) + "\n")
        counts[name] = {label: int(sum(split.labels[i] == c for i in index))
                        for c, label in enumerate(split.label_names)}
    info = {"ratios": list(ratios), "seed": seed, "source": str(source), "posts": len(split.labels),
            "counts": counts, "method": "stratified, scikit-learn train_test_split (test first, then validation)"}
    atomic_write_json(out_dir / "split.json", info)
    return info


def classification_report(y_true, y_pred, classes) -> dict:
    """:func:`~.metrics.classification_metrics` plus the weighted and macro precision and recall."""
    from sklearn.metrics import precision_recall_fscore_support

    report = classification_metrics(y_true, y_pred, classes)
    for average in ("weighted", "macro"):
        precision, recall, _, _ = precision_recall_fscore_support(y_true, y_pred, labels=list(range(len(classes))),
                                                                  average=average,
                                                                  zero_division=0)
        report[f"{average}_precision"], report[f"{average}_recall"] = float(precision), float(recall)
    return report


def _training_guids(run_dir: Path) -> set[str]:
    """Guids the run scored out of fold (for k-fold CV: every training post); empty if unknown."""
    dirs = member_dirs(run_dir) if is_ensemble(run_dir) else [Path(run_dir)]
    guids = set()
    for folder in dirs:
        if is_finished(folder):
            guids.update(read_oof(folder).guids)
    return guids


def evaluate_run(run_dir: Path, data_dir: Path, labels_file: Path | None, out_dir: Path | None = None,
                 device: str = "auto", backend: str | None = None, log=print) -> tuple[dict, Path]:
    """Predict the labelled posts of ``data_dir`` (of a lab folder: those ``labels_file`` names) with the run; write
    the evaluation (JSON + Markdown) -> (it, json path). Labels outside the run's classes are refused."""
    from dataclasses import replace

    from .calibration import expected_calibration_error, negative_log_likelihood
    from .data.dataset import open_data
    from .predict import load_run_folder
    from .runfolder import read_run_config

    config = read_run_config(member_dirs(run_dir)[0] if is_ensemble(run_dir) else run_dir)
    classes = run_labels(config)
    # cheap checks before loading the run; the table's columns and options as the run was trained with
    split = open_data(Path(data_dir), "train", replace(config.data, labels=list(classes)), train_file=labels_file)
    with load_run_folder(run_dir, device=device, backend=backend) as run:
        probs = run.predict_split(split, log)
        temperature, predictor = getattr(run, "temperature", None), run.description
        predicted, offsets = run.labels_of(probs), run.decision_offsets
    labels = np.asarray(split.labels)
    report = classification_report(labels, predicted, classes)
    labels_file = labels_file or data_dir
    overlap = sorted(set(split.guids) & _training_guids(run_dir))
    evaluation = {
        "run": str(run_dir), "labels_file": str(labels_file), "data": str(data_dir), "posts": len(labels),
        "label_counts": split.label_counts(), **report,
        "temperature": temperature, "decision_offsets": offsets,
        "ece": expected_calibration_error(probs, labels), "nll": negative_log_likelihood(probs, labels),
        "posts_seen_in_training": len(overlap), "predictor": predictor,
    }
    out_dir = Path(out_dir) if out_dir is not None else Path(run_dir) / EVALUATIONS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{Path(labels_file).stem}.json"
    atomic_write_json(json_path, evaluation)
    atomic_write_text(json_path.with_suffix(".md"), evaluation_markdown(evaluation) + "\n")
    return evaluation, json_path


def evaluation_tables(evaluation: dict) -> tuple[list[dict], list[dict], list[dict]]:
    """(the headline row, per-class rows, confusion rows) of an evaluation, as text cells."""
    headline = [{"labelled file": Path(evaluation["labels_file"]).name, "posts": evaluation["posts"],
                 "accuracy": f"{evaluation['accuracy']:.4f}", "weighted F1": f"{evaluation['weighted_f1']:.4f}",
                 "macro F1": f"{evaluation['macro_f1']:.4f}", "ECE": f"{evaluation['ece']:.4f}"}]
    per_class = [{"class": name, "precision": f"{v['precision']:.4f}", "recall": f"{v['recall']:.4f}",
                  "F1": f"{v['f1']:.4f}", "support": v["support"]} for name, v in evaluation["per_class"].items()]
    classes = list(evaluation["per_class"])
    confusion = [{"true \\ predicted": classes[i], **{name: count for name, count in zip(classes, row)}}
                 for i, row in enumerate(evaluation["confusion"])]
    return headline, per_class, confusion


def evaluation_markdown(evaluation: dict) -> str:
    from .tables import dict_table_markdown

    headline, per_class, confusion = evaluation_tables(evaluation)
    lines = [f"# evaluation of {evaluation['run']} on {evaluation['labels_file']}", "",
             dict_table_markdown(headline), "", dict_table_markdown(per_class), "",
             "Confusion matrix (rows: true, columns: predicted):", "", dict_table_markdown(confusion)]
    if evaluation.get("posts_seen_in_training"):
        lines += ["", f"Warning: {evaluation['posts_seen_in_training']} of these posts were among the run's "
                      "training posts: this is not a held-out score."]
    return "\n".join(lines)


def format_evaluation(evaluation: dict) -> str:
    lines = [f"{evaluation['posts']} labelled posts of {evaluation['labels_file']} ({evaluation['predictor']}): "
             f"accuracy {evaluation['accuracy']:.4f}  weighted F1 {evaluation['weighted_f1']:.4f}  "
             f"macro F1 {evaluation['macro_f1']:.4f}  ECE {evaluation['ece']:.4f}"]
    lines += [f"  {name:9s} precision {v['precision']:.4f}  recall {v['recall']:.4f}  F1 {v['f1']:.4f}  "
              f"support {v['support']}" for name, v in evaluation["per_class"].items()]
    lines.append("  confusion (rows: true " + "/".join(evaluation["per_class"]) + "): " + str(evaluation["confusion"]))
    if evaluation.get("posts_seen_in_training"):
        lines.append(f"warning: {evaluation['posts_seen_in_training']} of these posts were among the run's training "
                     "posts: this is not a held-out score")
    return "\n".join(lines)


def read_evaluations(run_dir: Path) -> list[dict]:
    folder = Path(run_dir) / EVALUATIONS_DIR
    return [json.loads(path.read_text(encoding="utf-8")) for path in sorted(folder.glob("*.json"))]
