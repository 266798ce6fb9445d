"""``mmsent report``: one self-contained HTML page (and a Markdown twin) over run and experiment folders.

A run folder (``mmsent train``) gives the protocol behind its figures, the label distribution, per-epoch
loss/accuracy curves of every fold, the out-of-fold confusion matrix and per-class precision / recall / F1, the
reliability diagram before and after temperature scaling, and its held-out evaluations (``mmsent evaluate``) beside
its CV. A folder of runs over seeds (``train --seeds``) gives the spread over seeds. An experiment folder
(``ablate``, ``compare``, ``sweep``) gives its table, and a sweep its validation-loss curves per value of each swept
key. Figures are drawn with matplotlib (Agg), embedded in the HTML as PNG data and written to ``OUT/figures/`` for
the Markdown.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_write_bytes, atomic_write_text
from .ensemble import summary_rows
from .evaluation import evaluation_tables, read_evaluations
from .experiments import display_rows, setting_columns
from .metrics import format_mean_std
from .runfolder import (CONFIG_FILE, HISTORY_FILE, RunError, fold_dirs, is_ensemble, is_finished_run, is_seed_group,
                        read_calibration_dict, read_json, read_metrics, seed_dirs)
from .seeds import read_seed_summary, seeds_table
from .summaries import describe_protocol, figures_name, format_calibration
from .tables import dict_table_markdown

EXPERIMENT_KINDS = ("ablation", "comparison", "sweep")


@dataclass
class Section:
    """A titled part of the report: Markdown-ish text blocks, tables and figures, in order."""

    title: str
    items: list[tuple[str, object]] = field(default_factory=list)  # (kind, payload); a figure: (fig, caption)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _read_json(path: Path):
    return read_json(path, "a file of mmsent's results")


def experiment_kinds(folder: Path) -> list[str]:
    return [kind for kind in EXPERIMENT_KINDS if (folder / f"{kind}.json").is_file()]


def _histories(run: Path) -> list[list[dict]]:
    """Per-fold histories of a run (of every seed's run for a folder of runs over seeds)."""
    if is_seed_group(run):
        return [h for sub in seed_dirs(run) for h in _histories(sub)]
    return [read_json(fold / HISTORY_FILE, "a fold's history", list) for fold in fold_dirs(run)
            if (fold / HISTORY_FILE).is_file()]


def _integer_epochs(*axes) -> None:
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def label_distribution_figure(counts: dict[str, int]):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3))
    names = list(counts)
    values = [counts[n] for n in names]
    polarity = {"negative": "#c0392b", "neutral": "#7f8c8d", "positive": "#27ae60"}
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    bars = ax.bar(names, values, color=[polarity.get(n, cycle[i % len(cycle)]) for i, n in enumerate(names)])
    total = max(sum(values), 1)
    for bar, value in zip(bars, values):
        ax.annotate(f"{value} ({value / total:.0%})", (bar.get_x() + bar.get_width() / 2, value), ha="center",
                    va="bottom", fontsize=8)
    ax.set_ylabel("posts")
    ax.set_title("label distribution")
    ax.margins(y=0.15)
    fig.tight_layout()
    return fig


def curves_figure(histories: list[list[dict]], title: str):
    """Train/validation loss and accuracy per epoch, one colour per fold (train dashed)."""
    plt = _pyplot()
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(9, 3.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, history in enumerate(histories):
        colour = colours[index % len(colours)]
        epochs = [h["epoch"] for h in history]
        loss_ax.plot(epochs, [h["train_loss"] for h in history], "--", color=colour, alpha=0.7)
        loss_ax.plot(epochs, [h["val_loss"] for h in history], "-", color=colour, label=f"fold {index + 1}")
        if all("train_accuracy" in h for h in history):
            acc_ax.plot(epochs, [h["train_accuracy"] for h in history], "--", color=colour, alpha=0.7)
        acc_ax.plot(epochs, [h["val_accuracy"] for h in history], "-", color=colour)
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss (dashed: train, solid: validation)")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="accuracy (dashed: train, solid: validation)")
    loss_ax.legend(fontsize=7)
    _integer_epochs(loss_ax, acc_ax)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def confusion_figure(confusion: list[list[int]], classes: list[str], title: str):
    """A confusion matrix (rows: true, columns: predicted), axes named by ``classes``."""
    plt = _pyplot()
    matrix = np.asarray(confusion)
    side = 2.6 + 0.45 * len(classes)
    fig, ax = plt.subplots(figsize=(side, side * 0.85))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center",
                color="white" if value > matrix.max() / 2 else "black", fontsize=9)
    ax.set_xticks(range(len(classes)), classes, rotation=45 if len(classes) > 4 else 0)
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    return fig


def sweep_curves_figure(folder: Path, rows: list[dict], key: str):
    """Mean validation loss per epoch (over folds and the other keys' values), one line per value of ``key``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    by_value: dict[str, list[list[float]]] = {}
    for row in rows:
        for history in _histories(folder / row["run"]):
            by_value.setdefault(str(row[key]), []).append([h["val_loss"] for h in history])
    for value, curves in by_value.items():
        length = max(len(c) for c in curves)
        mean = [np.mean([c[e] for c in curves if len(c) > e]) for e in range(length)]
        ax.plot(range(1, length + 1), mean, marker="o", markersize=3, label=f"{key.split('.')[-1]}={value}")
    ax.set(xlabel="epoch", ylabel="validation loss",
           title=f"validation loss by {key}\n(mean over the folds that ran that epoch)")
    ax.legend(fontsize=7)
    _integer_epochs(ax)
    fig.tight_layout()
    return fig


def reliability_figure(calibration: dict, title: str):
    """Reliability diagram: per confidence bin, accuracy against mean confidence, before and after temperature
    scaling (cross-fitted), with the share of posts per bin below."""
    plt = _pyplot()
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(4.8, 5.2), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], ":", color="#888", label="perfectly calibrated")
    for key, name, colour in (("reliability_before", "before", "#c0392b"), ("reliability_after", "after", "#2471a3")):
        bins = [b for b in calibration.get(key, []) if b["count"]]
        ece = calibration.get(f"ece_{name}")
        label = f"{name} (ECE {ece:.4f})" if ece is not None else name
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", color=colour, label=label,
                markersize=4)
    bins = calibration.get("reliability_before", [])
    total = max(sum(b["count"] for b in bins), 1)
    hist.bar([(b["lower"] + b["upper"]) / 2 for b in bins], [b["count"] / total for b in bins],
             width=1 / max(len(bins), 1), color="#c0392b", alpha=0.5, label="before")
    bins = calibration.get("reliability_after", [])
    hist.bar([(b["lower"] + b["upper"]) / 2 for b in bins], [b["count"] / total for b in bins],
             width=1 / max(len(bins), 1), color="#2471a3", alpha=0.5, label="after")
    ax.set(ylabel="accuracy", xlim=(0, 1.02), ylim=(0, 1.04),
           title=f"{title}\ntemperature {calibration['temperature']:.3f}")
    hist.set(xlabel="confidence (highest class probability)", ylabel="share of posts")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def per_class_table(out_of_fold: dict) -> list[dict]:
    return [{"class": name, "precision": f"{v['precision']:.4f}", "recall": f"{v['recall']:.4f}",
             "F1": f"{v['f1']:.4f}", "support": v["support"]} for name, v in out_of_fold["per_class"].items()]


def run_section(run: Path, title: str) -> Section:
    metrics, config = read_metrics(run), _read_json(run / CONFIG_FILE)
    cv = metrics["cv"]
    section = Section(title)
    section.items.append(("text", (
        f"{config['model']} / fusion {config['fusion']['name']} / modality {config['modality']}: "
        f"{figures_name(metrics)} accuracy {format_mean_std(cv['accuracy_mean'], cv['accuracy_std'])}, "
        f"weighted F1 {format_mean_std(cv['weighted_f1_mean'], cv['weighted_f1_std'])}, "
        f"macro F1 {format_mean_std(cv['macro_f1_mean'], cv['macro_f1_std'])}; "
        f"wall time {metrics['wall_seconds']:.0f} s on {metrics.get('device', '?')}.")))
    section.items.append(("text", f"Protocol: {describe_protocol(metrics)}."))
    evaluations = read_evaluations(run)
    if evaluations:
        section.items.append(("text", "Held-out evaluation (mmsent evaluate) beside the run's own figures:"))
        section.items.append(("table", evaluation_rows(metrics, evaluations)))
        for evaluation in evaluations:
            _, per_class, confusion = evaluation_tables(evaluation)
            name = Path(evaluation["labels_file"]).name
            section.items.append(("figure", (confusion_figure(evaluation["confusion"], list(evaluation["per_class"]),
                                                              f"{name}: confusion matrix"),
                                             f"{name}: confusion matrix (rows: true, columns: predicted)")))
            section.items.append(("table", per_class))
    section.items.append(("table", [{"fold": r["fold"] + 1, "accuracy": f"{r['accuracy']:.4f}",
                                     "weighted F1": f"{r['weighted_f1']:.4f}", "macro F1": f"{r['macro_f1']:.4f}",
                                     "best epoch": r["best_epoch"], "epochs run": r["epochs_run"]}
                                    for r in metrics["folds"]]))
    histories = _histories(run)
    if histories:
        section.items.append(("figure", (curves_figure(histories, f"{title}: per-epoch curves"),
                                         "per-epoch train/validation loss and accuracy, every fold (validation: "
                                         "the posts early stopping chose on, see the protocol)")))
    if "out_of_fold" in metrics:
        confusion = confusion_figure(metrics["out_of_fold"]["confusion"], list(metrics["out_of_fold"]["per_class"]),
                                 "out-of-fold confusion matrix")
        section.items.append(("figure", (confusion, "out-of-fold confusion matrix (rows: true, columns: predicted)")))
        section.items.append(("table", per_class_table(metrics["out_of_fold"])))
    section.items.extend(_calibration_items(run, title, "the")
                         or [("text", "Not calibrated (no calibration.json): predictions use temperature 1.")])
    return section


def _calibration_items(folder: Path, title: str, whose: str) -> list:
    """The calibration line and reliability diagram of a run or ensemble folder ([] when it has no calibration)."""
    calibration = _calibration_of(folder)
    if calibration is None:
        return []
    return [("text", format_calibration(calibration) + "."),
            ("figure", (reliability_figure(calibration, f"{title}: reliability"),
                        f"reliability diagram of {whose} out-of-fold probabilities before and after temperature "
                        "scaling (cross-fitted)"))]


def _calibration_of(run: Path) -> dict | None:
    return read_calibration_dict(run)


def evaluation_rows(metrics: dict, evaluations: list[dict]) -> list[dict]:
    """The run's own figures (CV or validation) and each held-out evaluation, as rows of one table."""
    cv = metrics["cv"]
    own = ("validation file" if metrics.get("protocol", {}).get("name") == "fixed_split"
           else f"{figures_name(metrics)} (mean ± std over folds)")
    rows = [{"figures": own, "posts": sum(row.get("val_size", 0) for row in metrics["folds"]),
             "accuracy": format_mean_std(cv['accuracy_mean'], cv['accuracy_std']),
             "weighted F1": f"{cv['weighted_f1_mean']:.4f}", "macro F1": f"{cv['macro_f1_mean']:.4f}",
             "ECE": (f"{metrics['calibration']['ece_after']:.4f}" if metrics.get("calibration", {}).get("ece_after")
                     is not None else "-")}]
    for evaluation in evaluations:
        rows.append({"figures": f"held-out {Path(evaluation['labels_file']).name}", "posts": evaluation["posts"],
                     "accuracy": f"{evaluation['accuracy']:.4f}", "weighted F1": f"{evaluation['weighted_f1']:.4f}",
                     "macro F1": f"{evaluation['macro_f1']:.4f}", "ECE": f"{evaluation['ece']:.4f}"})
    return rows


def seeds_section(folder: Path) -> Section:
    """A folder of runs over seeds (``mmsent train --seeds``): one row per seed and the mean ± std over seeds."""
    summary = read_seed_summary(folder)
    section = Section(f"seeds {folder.name}")
    over = summary["over_seeds"]
    section.items.append(("text", (
        f"The same configuration on {over['seeds']} seeds ({', '.join(map(str, summary['seeds']))}). "
        f"Protocol: {describe_protocol(summary)}. Accuracy "
        f"{format_mean_std(over['accuracy_mean'], over['accuracy_seed_std'])} over seeds "
        f"(± {over['accuracy_fold_std']:.4f} over folds, mean over "
        "seeds): a difference between configurations smaller than the spread over seeds is not a measured one.")))
    section.items.append(("table", seeds_table(summary)))
    return section


def ensemble_section(folder: Path) -> Section:
    """An ensemble folder (``mmsent ensemble``): each member's CV and the ensemble's, its confusion matrix."""
    metrics = read_metrics(folder)
    section = Section(f"ensemble {folder.name}")
    section.items.append(("text", f"Protocol: {describe_protocol(metrics)}."))
    rows = [{"run": name, **cv} for name, cv in summary_rows(metrics)]
    section.items.append(("table", [{"run": r["run"], "accuracy": format_mean_std(r['accuracy_mean'],
                                                                                  r['accuracy_std']),
                                     "weighted F1": f"{r['weighted_f1_mean']:.4f}",
                                     "macro F1": f"{r['macro_f1_mean']:.4f}"} for r in rows]))
    confusion = confusion_figure(metrics["out_of_fold"]["confusion"], list(metrics["out_of_fold"]["per_class"]),
                                 "out-of-fold confusion matrix")
    section.items.append(("figure", (confusion, "out-of-fold confusion matrix (rows: true, columns: predicted)")))
    section.items.append(("table", per_class_table(metrics["out_of_fold"])))
    section.items.extend(_calibration_items(folder, f"ensemble {folder.name}", "the ensemble's"))
    return section


def experiment_section(folder: Path, kind: str) -> Section:
    data = _read_json(folder / f"{kind}.json")
    rows = data["rows"]
    section = Section(f"{kind} ({folder})")
    section.items.append(("text", f"Protocol: {describe_protocol(data)}."))
    section.items.append(("table", display_rows(rows)))
    if kind == "sweep" and rows:
        for key in setting_columns(rows):
            section.items.append(("figure", (sweep_curves_figure(folder, rows, key), f"validation loss by {key}")))
    return section


def _label_counts(folders: list[Path]) -> dict | None:
    for folder in folders:
        cells = sorted((folder / "cells").glob("*"))
        candidates = [folder] if is_finished_run(folder) else [
            *seed_dirs(folder), *cells, *(run for cell in cells for run in seed_dirs(cell))]
        for candidate in candidates:
            if is_finished_run(candidate):
                return read_metrics(candidate)["data"]["label_counts"]
    return None


def build_sections(folders: list[Path], data: Path | None = None, explain_posts: int = 200) -> list[Section]:
    """Sections for every folder; a folder that is neither a run nor an experiment is an error.

    ``data``: the data folder the runs were trained on; with it each run gets an error-analysis section
    (:mod:`mmsent.error_analysis`, ``explain_posts`` posts for the words pushing toward each class, 0 = all)."""
    sections = []
    counts = _label_counts(folders)
    if counts:
        overview = Section("data")
        overview.items.append(("text", f"{sum(counts.values())} labelled posts: "
                                       + ", ".join(f"{k} {v}" for k, v in counts.items())))
        overview.items.append(("figure", (label_distribution_figure(counts), "label distribution")))
        sections.append(overview)
    for folder in folders:
        kinds = experiment_kinds(folder)
        if is_finished_run(folder):
            sections.append(run_section(folder, f"run {folder.name}"))
            if data is not None:
                from .error_analysis import error_analysis_items

                sections.append(Section(f"run {folder.name}: error analysis",
                                        error_analysis_items(folder, Path(data), explain_posts)))
        elif is_seed_group(folder):
            sections.append(seeds_section(folder))
        elif is_ensemble(folder):
            sections.append(ensemble_section(folder))
        elif kinds:
            for kind in kinds:
                sections.append(experiment_section(folder, kind))
        else:
            raise RunError(f"{folder} is neither a run folder (metrics.json + config.json), an ensemble folder "
                           f"(ensemble.json), a folder of runs over seeds (seeds.json) nor an experiment folder "
                           f"({', '.join(k + '.json' for k in EXPERIMENT_KINDS)})")
    return sections


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    _pyplot().close(fig)
    return buffer.getvalue()


def _html_cell(value, tag: str) -> str:
    text = html.escape(str(value))
    if text.startswith("**") and text.endswith("**"):  # the best row of a grid, marked as in its Markdown
        text = f"<b>{text[2:-2]}</b>"
    return f"<{tag}>{text}</{tag}>"


def _dict_table_html(rows: list[dict]) -> str:
    if not rows:
        return "<p>(no rows)</p>"
    header = "".join(_html_cell(k, "th") for k in rows[0])
    body = "".join("<tr>" + "".join(_html_cell(v, "td") for v in r.values()) + "</tr>" for r in rows)
    return f"<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>"


STYLE = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}
td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}img{max-width:100%;display:block;margin:.6em 0}"""


def write_report(out_dir: Path, folders: list[Path], data: Path | None = None,
                 explain_posts: int = 200) -> tuple[Path, Path]:
    """Write ``OUT/report.html`` (self-contained) and ``OUT/report.md`` (+ ``OUT/figures/*.png``); ``data`` adds
    each run's error analysis (see :func:`build_sections`)."""
    out_dir = Path(out_dir)
    sections = build_sections([Path(f) for f in folders], data, explain_posts)
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    sources = ", ".join(str(f) for f in folders)
    md = ["# mmsent report", "", f"Sources: {sources}", ""]
    page = [f"<!doctype html><html><head><meta charset='utf-8'><title>mmsent report</title><style>{STYLE}</style>"
            "</head><body><h1>mmsent report</h1>", f"<p>Sources: {html.escape(sources)}</p>"]
    figure_count = 0
    for section in sections:
        md += [f"## {section.title}", ""]
        page.append(f"<h2>{html.escape(section.title)}</h2>")
        for kind, payload in section.items:
            if kind == "text":
                md += [str(payload), ""]
                page.append(f"<p>{html.escape(str(payload))}</p>")
            elif kind == "table":
                md += [dict_table_markdown(payload), ""]
                page.append(_dict_table_html(payload))
            elif kind == "html":  # a fragment built by its section: (HTML, Markdown, {relative path: bytes})
                fragment, markdown, files = payload
                for name, content in files.items():
                    atomic_write_bytes(out_dir / name, content)
                md += [markdown, ""]
                page.append(fragment)
            else:
                figure_count += 1
                fig, caption = payload
                png = _png(fig)
                name = f"figures/figure_{figure_count:02d}.png"
                atomic_write_bytes(out_dir / name, png)
                md += [f"![{caption}]({name})", ""]
                page.append(f"<figure><img alt='{html.escape(caption, quote=True)}' src='data:image/png;base64,"
                            f"{base64.b64encode(png).decode()}'><figcaption>{html.escape(caption)}</figcaption>"
                            "</figure>")
    page.append("</body></html>")
    html_path, md_path = out_dir / "report.html", out_dir / "report.md"
    atomic_write_text(html_path, "\n".join(page))
    atomic_write_text(md_path, "\n".join(md))
    return html_path, md_path
