"""Markdown tables from benchmark records (the JSON files of ``benchmarks/results/``, written by ``record.py``).

``benchmarks/README.md`` holds rendered blocks, each between a marker naming its records (paths relative to the
README) and an end marker:

    <!-- rendered: levers-default from results/levers_default_base.json results/levers_default_ocr.json -->
    ... the table, written by this script ...
    <!-- end rendered -->

    python benchmarks/render.py              # rewrite every rendered block of benchmarks/README.md from its records
    python benchmarks/render.py --check      # exit 1 when a block differs from what its records render
    python benchmarks/render.py RECORD...    # print the tables of these records
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from pathlib import Path

README = Path(__file__).parent / "README.md"
BLOCK = re.compile(r"^<!-- rendered: (?P<name>[\w.+-]+) from (?P<records>[^>]*?) -->\n(?P<body>.*?)"
                   r"^<!-- end rendered -->$", re.MULTILINE | re.DOTALL)
LEVER_FIGURES = ("accuracy", "weighted_f1", "macro_f1")


def read_record(path: Path) -> dict:
    """A record, with ``benchmark`` filled in for the lever records written before record.py (their figures at the
    top level)."""
    record = json.loads(Path(path).read_text(encoding="utf-8"))
    if "benchmark" not in record and "levers" in record:
        record = {**record, "benchmark": "levers",
                  "figures": {key: record[key] for key in ("base", "seeds", "levers") if key in record}}
    if "benchmark" not in record:
        record = {**record, "benchmark": Path(path).stem}
    return record


def mean_std(pair) -> str:
    return f"{pair[0]:.4f} ± {pair[1]:.4f}"


def levers_table(results: dict, base: str) -> str:
    """The lever table of one base: one row per lever (``bench_levers.py``'s figures)."""
    lines = [f"Base: `{base or '(the default)'}`; CV: mean ± std over seeds of the 5-fold CV means; fixed split: "
             "mean ± std over seeds on the 400 test posts; decision: the macro-F1 decision rule, cross-fitted on "
             "the out-of-fold probabilities; seeds averaged: the seed models' mean probabilities (CV: `mmsent "
             "ensemble` of the seed runs, each post predicted out of fold by every seed).", "",
             "| lever | CV accuracy | CV weighted F1 | CV macro F1 | CV macro F1, decision rule | fixed-split "
             "accuracy | fixed-split weighted F1 | fixed-split macro F1 | seeds averaged, CV: accuracy / weighted "
             "F1 / macro F1 | seeds averaged, fixed split: accuracy / weighted F1 / macro F1 | train s/seed |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def three(figures):
        return " / ".join(f"{figures[key]:.4f}" for key in LEVER_FIGURES) if figures else ""

    for name, lever in results.items():
        cv, fixed = lever["cv"], lever["fixed_split"]
        lines.append(f"| {name} | {mean_std(cv['accuracy'])} | {mean_std(cv['weighted_f1'])} | "
                     f"{mean_std(cv['macro_f1'])} | {mean_std(cv['decision_macro_f1']['macro_f1'])} | "
                     f"{mean_std(fixed['accuracy'])} | {mean_std(fixed['weighted_f1'])} | "
                     f"{mean_std(fixed['macro_f1'])} | {three(cv.get('seed_average'))} | "
                     f"{three(fixed.get('seed_average'))} | {cv['train_seconds_per_seed']:.0f} |")
    return "\n".join(lines) + "\n"


def render_levers(records: list[dict]) -> str:
    """One lever table per base, the levers of several records merged in their order."""
    by_base: dict[str, dict] = {}
    for record in records:
        by_base.setdefault(record["figures"]["base"], {}).update(record["figures"]["levers"])
    return "\n".join(levers_table(results, base) for base, results in by_base.items())


def render_ocr(records: list[dict]) -> str:
    """``bench_ocr.py``: ms per image and images with text, for RapidOCR's settings and mmsent's."""
    lines = ["| settings | images | ms per image | images with text |", "| --- | --- | --- | --- |"]
    for record in records:
        figures = record["figures"]
        settings = ", ".join(f"{key}={value}" for key, value in figures.get("settings", {}).items())
        lines.append(f"| RapidOCR's own | {figures['images']} | {figures['rapidocr_defaults_ms_per_image']:.0f} | "
                     f"{figures['rapidocr_defaults_with_text']} |")
        lines.append(f"| mmsent's ({settings}) | {figures['images']} | {figures['mmsent_ms_per_image']:.0f} | "
                     f"{figures['mmsent_with_text']} |")
    return "\n".join(lines) + "\n"


def flat_figures(figures, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    if not isinstance(figures, dict):
        return {prefix.rstrip("."): figures}
    flat = {}
    for key, value in figures.items():
        flat.update(flat_figures(value, f"{prefix}{key}."))
    return flat


def value_text(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    if isinstance(value, list):
        return ", ".join(map(value_text, value))
    return str(value)


def render_figures(records: list[dict]) -> str:
    """Any record: a figure per row, a column per record."""
    flat = [flat_figures(record["figures"]) for record in records]
    keys = list(dict.fromkeys(key for figures in flat for key in figures))
    lines = ["| figure | " + " | ".join(record.get("date", "")[:10] or "value" for record in records) + " |",
             "| --- |" + " --- |" * len(records)]
    lines += [f"| {key} | " + " | ".join(value_text(figures.get(key, "")) for figures in flat) + " |" for key in keys]
    return "\n".join(lines) + "\n"


RENDERERS = {"levers": render_levers, "ocr": render_ocr}  # benchmark -> its table; others: render_figures


def provenance(paths: list[Path], records: list[dict]) -> str:
    """Which records a table comes from, and the revisions they measured."""
    revisions = sorted({record.get("revision", "") for record in records} - {""})
    return (f"Rendered from {', '.join(f'`{Path(path).name}`' for path in paths)}"
            + (f" (revision {', '.join(revisions)})" if revisions else "") + ".\n")


def render(paths: list[Path]) -> str:
    """The Markdown of the records at ``paths`` (all of one benchmark)."""
    records = [read_record(path) for path in paths]
    kinds = {record["benchmark"] for record in records}
    if len(kinds) != 1:
        raise ValueError(f"records of several benchmarks in one table: {', '.join(sorted(kinds))}")
    return RENDERERS.get(kinds.pop(), render_figures)(records) + "\n" + provenance(paths, records)


def render_readme(text: str, folder: Path) -> str:
    """``text`` (a README) with every rendered block re-rendered from its records (paths relative to ``folder``)."""

    def block(match: re.Match) -> str:
        paths = [folder / name for name in match["records"].split()]
        return (f"<!-- rendered: {match['name']} from {match['records']} -->\n{render(paths)}"
                f"<!-- end rendered -->")

    return BLOCK.sub(block, text)


def check(readme: Path) -> list[str]:
    """The names of the rendered blocks of ``readme`` that differ from what their records render, each with its
    diff."""
    text = readme.read_text(encoding="utf-8")
    fresh = {match["name"]: match["body"] for match in BLOCK.finditer(render_readme(text, readme.parent))}
    problems = []
    for match in BLOCK.finditer(text):
        if match["body"] != fresh[match["name"]]:
            diff = difflib.unified_diff(match["body"].splitlines(), fresh[match["name"]].splitlines(), "README",
                                        "records", lineterm="", n=0)
            problems.append(f"{match['name']}:\n" + "\n".join(diff))
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("records", nargs="*", type=Path, help="print the tables of these records")
    parser.add_argument("--readme", type=Path, default=README)
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a rendered block of the README differs from its records")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (OSError, ValueError, KeyError) as error:  # a record missing, unreadable or not of its benchmark's shape
        print(f"render.py: {type(error).__name__}: {error}", file=sys.stderr)
        return 1


def run(args) -> int:
    """What main's options ask for: print records' tables, check the README, or render it."""
    if args.records:
        print(render(args.records), end="")
        return 0
    if args.check:
        problems = check(args.readme)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print(f"{args.readme}: {len(problems)} rendered block(s) differ from their records; run "
                  "'python benchmarks/render.py' to render them", file=sys.stderr)
            return 1
        print(f"{args.readme}: every rendered block matches its records")
        return 0
    text = args.readme.read_text(encoding="utf-8")
    args.readme.write_text(render_readme(text, args.readme.parent), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
