"""Command line: ``mmsent check | convert | split | train | evaluate | ablate | compare | sweep | report | ensemble | predict |
serve | export | config``.

``main(argv)`` is callable from tests. The commands marked ``base`` (predict, serve, check, convert) run in a base
install, without the training extras (PyTorch and the rest); the others say that they need them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import __version__
from .config import (
    BACKENDS,
    ConfigError,
    allowed_values,
    config_fields,
    config_types,
    load_config_file,
    resolve_config,
    type_name,
)
from .data.images import MAX_IMAGE_PIXELS
from .registry import FUSIONS, IMAGE_ENCODERS, LOSSES, MODEL_FAMILIES, PROFILES, TABLE_SUFFIXES, TEXT_ENCODERS

DEFAULT_TRAIN_FILE = "train.txt"
DEFAULT_TEST_FILE = "test_without_label.txt"
DEFAULT_EVAL_FILE = "test.txt"
_GRID_NOTE = "finished cells are kept, an interrupted grid continues"
RUN_HELP = "run folder written by 'mmsent train', or an ensemble folder written by 'mmsent ensemble'"

def _add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("MMSENT_DATA", "../shared/data/mvsa")),
                        help="data set: a lab folder (train.txt, test_without_label.txt, data/), an MVSA release "
                             f"folder or a table file ({' '.join(TABLE_SUFFIXES.names())}) (default: $MMSENT_DATA or "
                             "../shared/data/mvsa)")
    parser.add_argument("--train-file", type=Path, help=f"lab folder: labelled file (default: DATA/{DEFAULT_TRAIN_FILE})")
    parser.add_argument("--test-file", type=Path, help=f"lab folder: unlabelled file (default: DATA/{DEFAULT_TEST_FILE})")
    add_data_options(parser)


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """--format, --labels, the table's column names and --allow-outside-paths: the keys of ``RunConfig.data``."""
    group = parser.add_argument_group("data format (config keys data.*)")
    group.add_argument("--format", dest="cfg:data.format", choices=allowed_values("data.format"),
                       help="format of --data (default: detected from what --data is)")
    group.add_argument("--labels", dest="cfg:data.labels", metavar="A,B,...",
                       help="the label names in class order; rows with another label are refused (default: the "
                            "sorted names found in the labelled rows)")
    for column in ("text", "image", "label", "id"):
        group.add_argument(f"--{column}-column", dest=f"cfg:data.{column}_column", metavar="NAME",
                           help=f"table column of the {column} (default: {column})")
    group.add_argument("--allow-outside-paths", dest="cfg:data.allow_outside_paths", action="store_const", const=True,
                       help="accept table image paths that are absolute or leave the table's folder")


def data_config(args):
    """The DataConfig of the data options given (the rest at their defaults)."""
    keys = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg:data.") and v is not None}
    return resolve_config(keys).data


def _open_data(args, part: str, **kw):
    """``part`` ("train" or "test") of --data in its format, with the data options."""
    from .data.dataset import open_data

    return open_data(args.data, part, data_config(args), args.train_file, args.test_file, **kw)


def _label_files(args) -> tuple[Path, Path]:
    """--train-file / --test-file as given, else the standard names inside --data."""
    return (args.train_file or args.data / DEFAULT_TRAIN_FILE, args.test_file or args.data / DEFAULT_TEST_FILE)


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    """One option per config field that declares a short flag, plus --set KEY=VALUE for every field."""
    group = parser.add_argument_group("model and training (override --config)")
    kinds = config_types()
    for key, spec, default in config_fields():
        flag = spec.metadata.get("flag")
        if not flag:
            continue
        kwargs = {"dest": f"cfg:{key}", "default": None, "metavar": key.rsplit(".", 1)[-1].upper(), "help": f"{spec.metadata.get('help', '')} (default: {default})"}
        if kinds[key] is bool:  # a switch: --flag turns it on, --no-flag off
            kwargs = {"dest": kwargs["dest"], "default": None, "action": argparse.BooleanOptionalAction,
                      "help": f"{spec.metadata.get('help', '')} (default: {'on' if default else 'off'})"}
        else:  # the values config.allowed_values allows (a registry that cannot be loaded: none listed)
            kwargs["choices"] = list(allowed_values(key, spec) or ()) or None
        group.add_argument(flag, **kwargs)
    group.add_argument("--profile", choices=PROFILES.names(),
                       help="a named preset applied over the defaults (flags, --set and --config override it): "
                            + "; ".join(f"{name}: {(PROFILES.get(name).__doc__ or '').split(':')[0]}"
                                        for name in PROFILES.names()))
    group.add_argument("--config", type=Path, help="JSON file of config keys (nested as in config.json, or dotted)")
    group.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="any config key, e.g. --set fusion.heads=8 (repeatable); see 'mmsent config'")


def user_overrides(args: argparse.Namespace) -> dict:
    """What the user asked for, as dotted config keys: --profile <- --config file <- --set <- short flags."""
    from .profiles import profile_overrides

    overrides = {}
    if args.profile:
        overrides.update(profile_overrides(args.profile))
    if args.config:
        overrides.update(load_config_file(args.config))
    for item in args.set:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        overrides[key.strip()] = value.strip()
    overrides.update({k[4:]: v for k, v in vars(args).items() if k.startswith("cfg:") and v is not None})
    return overrides


@dataclass(frozen=True)
class Command:
    """A subcommand: its help line, the function adding its options, and the function running it."""

    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    base: bool = False  # runs without the training extras (from an exported model: no PyTorch)


COMMANDS: dict[str, Command] = {}  # filled by @command, in the order of the help text


def command(name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None,
            base: bool = False):
    """Register the decorated ``cmd_*`` function as the subcommand ``name`` (``base``: it runs without the
    training extras)."""
    def register(run: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = Command(help, arguments, run, base)
        return run
    return register


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """One subparser per registered command (``only``: that command's alone, so that a base command does not load
    the registries the training commands list as choices, nor PyTorch with them)."""
    parser = argparse.ArgumentParser(prog="mmsent", description="Image+text sentiment classification of posts.")
    parser.add_argument("--version", action="version", version=f"mmsent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, spec in COMMANDS.items():
        if only is not None and name != only:
            continue
        subparser = sub.add_parser(name, help=spec.help)
        spec.arguments(subparser)
        subparser.set_defaults(func=spec.run)
    return parser


def _run_args(parser: argparse.ArgumentParser, help: str = RUN_HELP) -> None:
    parser.add_argument("--run", type=Path, required=True, help=help)


def _device_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--backend", choices=BACKENDS, help="what runs the frozen encoders (default: the run's "
                                                            "train.backend)")


def _check_arguments(parser: argparse.ArgumentParser) -> None:
    _add_data_args(parser)
    parser.add_argument("--all", action="store_true", help="list every problem, not only the first 50")
    parser.add_argument("--ocr", action="store_true", help="also read the text in every image (cached) and count "
                                                           "the images that hold some")


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    _add_data_args(parser)
    parser.add_argument("--out", type=Path, required=True, help="run folder to write")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted run in --out from its last finished epoch, with its saved "
                             "config.json (only --device, --workers and --backend may change)")
    parser.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    parser.add_argument("--val-file", type=Path,
                        help="a labelled file of validation posts (of --data): train one model on the training file "
                             "and choose its epoch on these, instead of cross-validating (the train / validation / "
                             "test protocol; score the test part with 'mmsent evaluate')")
    parser.add_argument("--seeds", metavar="S1,S2,...",
                        help="train the same configuration once per seed into OUT/seed_S and report the mean ± std "
                             "over seeds (OUT/seeds.json, OUT/seeds.md) beside each run's spread over folds")
    _add_config_args(parser)


def _split_arguments(parser: argparse.ArgumentParser) -> None:
    _add_data_args(parser)
    parser.add_argument("--out", type=Path, required=True, help="folder for the three label files")
    parser.add_argument("--ratios", default="8,1,1", help="TRAIN,VAL,TEST shares (default: 8,1,1)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the stratified shuffles (default: 42)")


def _evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    _run_args(parser)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("MMSENT_DATA", "../shared/data/mvsa")),
                        help="the labelled posts to score: a lab folder, an MVSA release or a table (default: "
                             "$MMSENT_DATA or ../shared/data/mvsa)")
    parser.add_argument("--labels-file", type=Path,
                        help=f"lab folder: the labelled guid,tag file to score (default: DATA/{DEFAULT_EVAL_FILE}); "
                             "a table or an MVSA release is scored on all its labelled posts")
    parser.add_argument("--out", type=Path, help="folder for the evaluation files (default: RUN/evaluations)")
    _device_args(parser)


def _experiment_arguments(parser: argparse.ArgumentParser, grid: bool = False) -> None:
    _add_data_args(parser)
    parser.add_argument("--out", type=Path, required=True, help="experiment folder (one run per cell)")
    if grid:
        parser.add_argument("--grid", nargs="+", required=True, metavar="KEY=V1,V2",
                            help="config key (fusion.heads) or flag name (heads, ffn_dim, lr, dim) with "
                                 "comma-separated values; list keys take ';'-separated lists")
    parser.add_argument("--overwrite", action="store_true", help="retrain every cell")
    parser.add_argument("--seeds", metavar="S1,S2,...",
                        help="train every cell once per seed (cells/<cell>/seed_S); the table shows the mean "
                             "and the std over seeds beside the std over folds")
    _add_config_args(parser)


def _report_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="folder for report.html, report.md, figures/")
    parser.add_argument("folders", type=Path, nargs="+", metavar="RUN",
                        help="run folders (mmsent train) or experiment folders (ablate, compare, sweep)")
    parser.add_argument("--data", type=Path, help="the data set the runs were trained on: adds each run's error "
                        "analysis (its most confident out-of-fold mistakes explained, and the words most often "
                        "pushing toward each class)")
    parser.add_argument("--explain-posts", type=int, default=200, metavar="N",
                        help="with --data: how many posts (evenly spaced) give the words pushing toward each class "
                             "(0 = every post; default 200)")


def _ensemble_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="ensemble folder to write")
    parser.add_argument("runs", type=Path, nargs="+", metavar="RUN", help="run folders written by 'mmsent train'")
    parser.add_argument("--stack", action="store_true",
                        help="combine the runs with a logistic regression over their probabilities and VADER's "
                             "lexicon scores of the text, fitted on their out-of-fold predictions, instead of "
                             "averaging them (needs --data)")
    parser.add_argument("--data", type=Path, help="with --stack: the data set the runs were trained on")
    parser.add_argument("--stack-c", default="auto",
                        help="with --stack: inverse L2 strength, or 'auto' (default): chosen from 0.01, 0.1, 1, 10 "
                             "by nested cross-fitting, so that no reported figure comes from the posts it was "
                             "chosen on")


def _predict_arguments(parser: argparse.ArgumentParser) -> None:
    _add_data_args(parser)
    _run_args(parser)
    parser.add_argument("--out", type=Path,
                        help="predictions file to write: OUT.csv or OUT.jsonl (columns id, label, p_<class>..., "
                             "error; a table file is read and written in chunks, in bounded memory, resumable, "
                             "sharded over torchrun's processes), or any other name for a 'guid,tag' file")
    table = parser.add_argument_group("with --out OUT.csv or OUT.jsonl")
    table.add_argument("--chunk-size", type=int, default=1000, metavar="ROWS",
                       help="rows read, predicted and written at a time (default: 1000)")
    table.add_argument("--resume", action="store_true",
                       help="continue an interrupted prediction into --out after its last finished chunk (same "
                            "run, same input, same options: OUT.progress.json says)")
    table.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    table.add_argument("--all-rows", action="store_true",
                       help="predict the labelled rows of a table too (default: only the rows without a label)")
    parser.add_argument("--text", help="one post: its text (with --image, or alone)")
    parser.add_argument("--image", type=Path, help="one post: its image file (with --text, or alone)")
    parser.add_argument("--json", action="store_true", help="one post: print the result as JSON")
    parser.add_argument("--explain", action="store_true",
                        help="one post: also say why: a signed score per word toward the label (coloured on a "
                             "terminal), the image regions that mattered and the share of each modality")
    parser.add_argument("--heatmap", type=Path, metavar="PNG",
                        help="with --explain and --image: write the image with its heat map over it to PNG")
    _device_args(parser)


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    _run_args(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-upload-mb", type=float, default=10.0, help="largest request body accepted (MB)")
    parser.add_argument("--max-image-pixels", type=int, default=None,
                        help="largest image accepted, in pixels (default and upper bound: the data loader's limit, "
                             f"{MAX_IMAGE_PIXELS:,})")
    parser.add_argument("--max-batch", type=int, default=32, metavar="POSTS",
                        help="requests predicted together at most (default: 32; 1 = one at a time)")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0, metavar="MS",
                        help="how long a request waits for others to share its batch (default: 5)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="server processes sharing the port, each loading the model once and batching its own "
                             "requests (default: 1; /metrics then counts the process that answers)")
    _device_args(parser)


@command("check", "validate a data set and list every problem found", _check_arguments, base=True)
def cmd_check(args) -> int:
    from .data.check import check_data, format_report

    from .config import OcrConfig

    report = check_data(args.data, args.train_file, args.test_file, data=data_config(args),
                        ocr=OcrConfig(enabled=True) if args.ocr else None)
    print(format_report(report, limit=10**9 if args.all else 50))
    return 0 if report.usable else 1


def _convert_arguments(parser: argparse.ArgumentParser) -> None:
    _add_data_args(parser)
    parser.add_argument("--out", type=Path, required=True, help="table file or folder to write")
    parser.add_argument("--link-images", action="store_true",
                        help="folder output: link the images instead of copying them")
    parser.add_argument("--overwrite", action="store_true", help="replace what is at --out")


@command("convert", f"write a data set in another format: a table (OUT{', '.join(TABLE_SUFFIXES.names())}) or a "
                    "folder (the lab layout); row order is kept", _convert_arguments, base=True)
def cmd_convert(args) -> int:
    from .data.convert import convert

    counts = convert(args.data, args.out, data_config(args), link_images=args.link_images, overwrite=args.overwrite,
                     train_file=args.train_file, test_file=args.test_file)
    print(f"wrote {counts['train']} labelled posts and {counts['test']} posts to predict to {args.out}")
    if counts.get("absolute_image_paths"):
        print(f"{counts['absolute_image_paths']} image paths are absolute (the images lie outside {args.out.parent}): "
              "read it with --allow-outside-paths")
    if counts.get("missing_images"):
        print(f"{counts['missing_images']} posts have no image file to copy")
    return 0


def _print_problems(split, limit: int = 10) -> None:
    _print_warnings([str(p) for p in split.problems if not p.fatal], limit)


def _print_warnings(warnings, limit: int = 10) -> None:
    """The data's non-fatal problems (repaired or worked around): how many, and the first ones."""
    if warnings:
        print(f"{len(warnings)} data warnings (repaired or worked around); first ones:")
        for warning in warnings[:limit]:
            print(f"  {warning}")


def _one_modality_rows(split, limit: int = 20) -> tuple[str, list[str]]:
    """(counts for the summary line, lines naming the posts that rested on one modality or none)."""
    no_image = split.guids_with("image_unusable")
    no_text = split.guids_with("text_missing", "text_empty")
    groups = (("text only (image unusable)", [g for g in no_image if g not in no_text]),
              ("image only (text missing or empty)", [g for g in no_text if g not in no_image]),
              ("neither (image unusable, text missing or empty)", [g for g in no_image if g in no_text]))
    counts = ", ".join(f"{len(guids)} rows rested on {what.split(' (')[0]}" for what, guids in groups)
    lines = [f"  {what}: {', '.join(guids[:limit])}{' ...' if len(guids) > limit else ''}"
             for what, guids in groups if guids]
    return counts, lines


@command("train", "stratified k-fold cross-validation; saves fold models and metrics", _train_arguments)
def cmd_train(args) -> int:
    from .api import train
    from .distributed import current_shard

    shard = current_shard()  # under torchrun: this process's share of the folds; only process 0 reports
    say = shard.report(print)
    result = train(args.data, args.out, overrides=user_overrides(args), seeds=args.seeds, resume=args.resume,
                   overwrite=args.overwrite, train_file=args.train_file, val_file=args.val_file,
                   test_file=args.test_file)
    if shard.is_main:
        _print_warnings(result.warnings)
    say(result.summary())
    average = getattr(result, "seeds_summary", {}).get("average")
    say(f"runs saved to {args.out}/seed_*" + (f", their average to {args.out / average['run']}" if average else "")
        + f"; summary in {args.out / 'seeds.json'} and seeds.md" if args.seeds is not None
        else f"run saved to {args.out}")
    return 0


@command("split", "cut a labelled file into stratified train / validation / test files (8:1:1 by "
         "default) -> OUT/train.txt, val.txt, test.txt, split.json", _split_arguments)
def cmd_split(args) -> int:
    from .data.formats import DataSource, format_of
    from .evaluation import parse_ratios, write_split

    ratios = parse_ratios(args.ratios)
    source = _label_files(args)[0]
    if format_of(DataSource(args.data, data_config(args))) != "folder":
        raise ConfigError("split writes guid,tag files naming posts of a lab folder; write the data set as one "
                          "first ('mmsent convert --data DATA --out FOLDER')")
    split = _open_data(args, "train")
    info = write_split(split, args.out, ratios, args.seed, source)
    for name, counts in info["counts"].items():
        print(f"{args.out / (name + '.txt')}: {sum(counts.values())} posts {counts}")
    print(f"stratified split of {info['posts']} posts of {source} at {args.ratios} (seed {args.seed}); "
          f"train with --train-file {args.out / 'train.txt'} --val-file {args.out / 'val.txt'}, score with "
          f"'mmsent evaluate --labels-file {args.out / 'test.txt'}'")
    return 0


@command("evaluate", "score a run on a labelled file: accuracy, weighted and macro F1, per-class "
         "precision/recall/F1, confusion matrix -> RUN/evaluations/<file>.json and .md", _evaluate_arguments)
def cmd_evaluate(args) -> int:
    from .evaluation import evaluate_run, format_evaluation

    labels_file = args.labels_file
    if args.data.is_dir() and (args.data / DEFAULT_TRAIN_FILE).is_file():  # a lab folder: a guid,tag file of it
        labels_file = labels_file or args.data / DEFAULT_EVAL_FILE
        if not labels_file.is_file():
            raise ConfigError(f"labelled file not found: {labels_file} (give --labels-file; 'mmsent split' makes one)")
    evaluation, path = evaluate_run(args.run, args.data, labels_file, args.out, device=args.device,
                                    backend=args.backend)
    print(format_evaluation(evaluation))
    print(f"evaluation written to {path} and {path.with_suffix('.md')}")
    return 0


@command("sweep", "a grid of config values (--grid KEY=V1,V2 ...) -> OUT/sweep.json, OUT/sweep.md; " + _GRID_NOTE,
         lambda parser: _experiment_arguments(parser, grid=True))
@command("compare", "every model family x fusion -> OUT/comparison.json, OUT/comparison.md; " + _GRID_NOTE,
         _experiment_arguments)
@command("ablate", "the same configuration on all / image / text -> OUT/ablation.json, OUT/ablation.md; "
         + _GRID_NOTE, _experiment_arguments)
def cmd_experiment(args) -> int:
    from .experiments import ablation_cells, comparison_cells, parse_grid, run_grid, sweep_cells

    overrides = user_overrides(args)
    base = resolve_config(overrides)
    if args.command == "ablate":
        kind, cells = "ablation", ablation_cells()
    elif args.command == "compare":
        kind, cells = "comparison", comparison_cells()
    else:
        kind, cells = "sweep", sweep_cells(parse_grid(args.grid))
    seeds = None
    if args.seeds is not None:
        from .seeds import parse_seeds

        seeds = parse_seeds(args.seeds)
        if "train.seed" in overrides:
            raise ConfigError("--seeds and --seed exclude each other: --seeds 1,2,3 trains every cell once per seed")
    split = _open_data(args, "train")
    per_seed = f" x {len(seeds)} seeds" if seeds else ""
    print(f"{kind}: {len(cells)} cells x {base.train.folds} folds{per_seed} on {len(split.records)} posts -> "
          f"{args.out}")
    start = time.perf_counter()
    run_grid(kind, overrides, cells, split, args.out, overwrite=args.overwrite, seeds=seeds)
    print((args.out / f"{kind}.md").read_text(encoding="utf-8"), end="")
    print(f"{kind} written to {args.out / (kind + '.json')} and .md in {time.perf_counter() - start:.1f} s")
    return 0


@command("report", "one HTML page (+ Markdown) with tables and plots of runs / experiments", _report_arguments)
def cmd_report(args) -> int:
    from .report import write_report

    missing = [str(f) for f in args.folders if not f.is_dir()]
    if missing:
        raise ConfigError(f"not a folder: {', '.join(missing)}")
    if args.data is not None and not args.data.exists():
        raise ConfigError(f"--data {args.data}: not found (the data set the runs were trained on)")
    if args.explain_posts < 0:
        raise ConfigError(f"--explain-posts must be 0 (every post) or positive, got {args.explain_posts}")
    html_path, md_path = write_report(args.out, args.folders, args.data, args.explain_posts)
    print(f"report written to {html_path} and {md_path}")
    return 0


def _stack_strength(text: str) -> float | None:
    """--stack-c: a positive number, or 'auto' (None: chosen by nested cross-fitting)."""
    from .runfolder import RunError

    if text == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise RunError(f"--stack-c must be a positive number or 'auto', got {text}")
    return value


@command("ensemble", "average (or --stack) the probabilities of finished runs cross-validated on the "
         "same folds -> an ensemble folder that predict and serve take", _ensemble_arguments)
def cmd_ensemble(args) -> int:
    from .ensemble import build_ensemble, format_ensemble
    from .runfolder import RunError

    if args.stack and args.data is None:
        raise RunError("--stack fits on the runs' training texts: give --data, the folder they were trained on")
    if args.data is not None and not args.stack:
        raise RunError("--data is only read with --stack")
    metrics = build_ensemble(args.runs, args.out, stack_data=args.data if args.stack else None,
                             stack_c=_stack_strength(args.stack_c))
    print(format_ensemble(metrics))
    from .summaries import describe_protocol, format_calibration

    print(f"protocol: {describe_protocol(metrics)}")
    print(format_calibration(metrics["calibration"]))
    print(f"ensemble saved to {args.out}")
    return 0


@command("predict", "one post (--text/--image), or every post to predict of --data (--out: 'guid,tag', or "
         "OUT.csv / OUT.jsonl with the probabilities, streamed for a table); fold ensemble", _predict_arguments,
         base=True)
def cmd_predict(args) -> int:
    if args.text is not None or args.image is not None:
        return _predict_one(args)
    if args.out is None:
        raise ConfigError("--out FILE is required to predict a data folder (or give --text and/or --image to "
                          "predict one post)")
    if args.json:
        raise ConfigError("--json applies to one post (--text/--image); folder mode writes --out")
    from .predict_table import OUTPUT_SUFFIXES

    if args.out.suffix.lower() in OUTPUT_SUFFIXES:
        return _predict_rows(args)
    if args.resume or args.overwrite or args.all_rows or args.chunk_size != 1000:
        raise ConfigError("--chunk-size, --resume, --overwrite and --all-rows apply to --out OUT.csv or OUT.jsonl")
    from . import load_run
    from .prediction import write_predictions

    start = time.perf_counter()
    split = _open_data(args, "test")  # cheap checks first
    with load_run(args.run, device=args.device, backend=args.backend) as run:
        probs = run.predict_split(split)
    write_predictions(args.out, split.guids, probs, run.classes, run.decision_offsets)
    _print_problems(split)
    counts, lines = _one_modality_rows(split)
    print(f"wrote {len(split.guids)} predictions to {args.out} ({run.description}; {counts}) "
          f"in {time.perf_counter() - start:.1f} s")
    for line in lines:
        print(line)
    return 0


def _predict_rows(args) -> int:
    """``predict --out OUT.csv|OUT.jsonl``: a table streamed in chunks; other data read whole."""
    from .data.formats import DataSource, format_of
    from . import load_run
    from .predict_table import TableJob, check_output, predict_table, write_rows_file

    if args.chunk_size < 1:
        raise ConfigError(f"--chunk-size must be at least 1, got {args.chunk_size}")
    check_output(args.out, args.resume, args.overwrite)
    source = DataSource(args.data, data_config(args), args.train_file, args.test_file)
    if format_of(source) != "table":
        if args.resume or args.all_rows:
            raise ConfigError("--resume and --all-rows apply to a table file (--data posts.csv, .jsonl, .parquet)")
        split = _open_data(args, "test")
        with load_run(args.run, device=args.device, backend=args.backend) as run:
            write_rows_file(args.out, split.guids, run.predict_split(split), run.classes, run.decision_offsets)
        _print_problems(split)
        print(f"wrote {len(split.guids)} predictions to {args.out} ({run.description})")
        return 0
    with load_run(args.run, device=args.device, backend=args.backend) as run:
        job = TableJob(run, source, args.out, args.chunk_size, args.all_rows)
        result = predict_table(job, resume=args.resume, overwrite=args.overwrite)
    if result.summary is not None:
        for line in result.summary.lines():
            print(line)
        print(f"wrote {args.out} ({run.description}): {result.rows} rows read here in {result.seconds:.1f} s "
              f"({result.rows / max(result.seconds, 1e-9):.0f} rows/s)")
    return 0


def _predict_one(args) -> int:
    """``predict --text/--image``: print one post's label and class probabilities."""
    from .data.images import open_image
    from . import load_run

    if args.out is not None:
        raise ConfigError("--out writes a data folder's predictions; with --text/--image the result is printed")
    image = None
    if args.image is not None:
        if not args.image.is_file():
            raise ConfigError(f"image file not found: {args.image}")
        image = args.image.read_bytes()
        open_image(image)  # refuse a non-image before loading the run
    if args.heatmap is not None and not (args.explain and image is not None):
        raise ConfigError("--heatmap needs --explain and --image")
    with load_run(args.run, device=args.device, backend=args.backend) as run:
        if args.explain:
            return _explain_one(args, run, image)
        result = run.predict(text=args.text, image=image)
        if args.json:
            print(json.dumps(result.to_dict()))
            return 0
        _print_label(result, run)
    return 0


def _print_label(result, run) -> None:
    """The label, what predicted it from which modalities, and one bar per class (a Prediction or Explanation)."""
    print(f"{result.label}  ({run.description}; from {' + '.join(result.modalities_used)})")
    for name, probability in result.probabilities.items():
        print(f"  {name:9s} {probability:.4f}  {'#' * round(probability * 40)}")


def _explain_one(args, run, image) -> int:
    """``predict --explain``: the label, the words coloured by their score, the image grid and modality shares."""
    import numpy as np

    from .explain import coloured_words, overlay_png
    from .atomic import atomic_write_bytes

    explanation = run.explain(text=args.text, image=image)
    if args.heatmap is not None and explanation.image is not None:
        atomic_write_bytes(args.heatmap, overlay_png(image, explanation.image))
    if args.json:
        print(json.dumps(explanation.to_dict()))
        return 0
    _print_label(explanation, run)
    unavailable = explanation.to_dict()["unavailable"]
    if explanation.words is not None:
        tty = sys.stdout.isatty()
        print(f"words toward {explanation.label}" + (" (orange: toward, blue: away)" if tty else " (score)") + ":")
        print("  " + coloured_words(explanation.words, tty))
        top = sorted((w for w in explanation.words if w["read"]), key=lambda w: -w["score"])[:5]
        print("  strongest: " + ", ".join(f"{w['word']} {w['score']:+.3f}" for w in top))
    else:
        print(f"words: {unavailable['words']}")
    if explanation.image is not None:
        grid = np.asarray(explanation.image.grid)
        row, column = np.unravel_index(int(np.argmax(grid)), grid.shape)
        print(f"image: {grid.shape[0]}x{grid.shape[1]} regions over the centre crop of the {explanation.image.width}x"
              f"{explanation.image.height} image; strongest toward {explanation.label}: row {row + 1}, column "
              f"{column + 1} ({grid[row, column]:+.3f}); sum {grid.sum():+.3f}")
        if args.heatmap is not None:
            print(f"  heat map written to {args.heatmap}")
    else:
        print(f"image: {unavailable['image']}")
    if explanation.modality_shares is not None:
        shares = explanation.modality_shares
        print(f"modalities: text {shares['text']:.0%}, image {shares['image']:.0%} (P({explanation.label}) "
              f"{explanation.probabilities[explanation.label]:.3f}; without the text {shares['without_text']:.3f}, "
              f"without the image {shares['without_image']:.3f})")
    else:
        print(f"modalities: {unavailable['modality_shares']}")
    return 0


@command("serve", "a local web page and JSON API (POST /predict) over a trained run or an exported model",
         _serve_arguments, base=True)
def cmd_serve(args) -> int:
    from .serve import Batching, serve

    if args.max_upload_mb <= 0:
        raise ConfigError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    batching = Batching(max_batch=args.max_batch, wait_ms=args.batch_wait_ms)
    serve(args.run, host=args.host, port=args.port, device=args.device, backend=args.backend,
          max_upload_bytes=int(args.max_upload_mb * 1024 * 1024), max_image_pixels=args.max_image_pixels,
          batching=batching, workers=args.workers)
    return 0


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    _run_args(parser, RUN_HELP)
    parser.add_argument("--out", type=Path, required=True, help="model folder to write (ONNX graphs, tokenizer, "
                                                                  "manifest, model card)")
    parser.add_argument("--overwrite", action="store_true", help="replace what is at --out")


@command("export", "a run or ensemble as one portable folder that predict and serve take without PyTorch "
         "(ONNX graphs, tokenizer, settings, model card)", _export_arguments)
def cmd_export(args) -> int:
    from .export import export_model, folder_size

    start = time.perf_counter()
    manifest = export_model(args.run, args.out, overwrite=args.overwrite)
    print(f"exported {args.run} to {args.out}: {len(manifest['encoders'])} encoders, {len(manifest['members'])} "
          f"member graph(s) of {sum(m['folds'] for m in manifest['members'])} folds, {folder_size(args.out) / 2**20:.1f} "
          f"MB, in {time.perf_counter() - start:.1f} s; it agrees with the run to {manifest['checked_gap']:.1e}")
    return 0


@command("calibrate", "fit the temperature of a k-fold run trained without one (from its out-of-fold "
         "predictions) -> RUN/calibration.json; 'train' does this for every new run",
         lambda parser: _run_args(parser, "run folder written by 'mmsent train'"))
def cmd_calibrate(args) -> int:
    from .refit import calibrate_run
    from .summaries import format_calibration

    calibration = calibrate_run(args.run)
    print(format_calibration(calibration.summary()))
    print(f"temperature saved to {args.run / 'calibration.json'}; predict, serve and load_run apply it")
    return 0


def _decide_arguments(parser: argparse.ArgumentParser) -> None:
    from .config import DECISION_RULES

    _run_args(parser, "run folder written by 'mmsent train'")
    parser.add_argument("--rule", choices=DECISION_RULES, default="macro_f1",
                        help="'macro_f1': per-class offsets fitted on the out-of-fold probabilities to maximise "
                             "macro F1; 'accuracy': the most probable class (removes a fitted rule)")


@command("decide", "fit how a run chooses its labels from its probabilities (from its out-of-fold predictions) -> "
         "RUN/decision.json, which predict, evaluate and serve apply", _decide_arguments)
def cmd_decide(args) -> int:
    from .refit import decide_run
    from .decision import format_decision

    decision = decide_run(args.run, args.rule)
    print(format_decision(decision))
    print(f"decision rule saved to {args.run / 'decision.json'}; predict, evaluate, serve and load_run apply it"
          if args.rule != "accuracy" else "labels are the most probable class again")
    return 0


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--markdown", action="store_true",
                        help="print the same as a Markdown page: the reference of every key, its flag, default, "
                             "allowed values and what it does (docs/config-reference.md is this page)")


def _settings(overrides: dict) -> str:
    return ", ".join(f"{key}={value}" for key, value in overrides.items())


_REGISTRIES = (("profiles", PROFILES), ("model families", MODEL_FAMILIES), ("text encoders", TEXT_ENCODERS),
               ("image encoders", IMAGE_ENCODERS), ("fusions", FUSIONS), ("losses", LOSSES))


@command("config", "print every config key with its default and the registered names (--markdown: as a page)",
         _config_arguments)
def cmd_config(args) -> int:
    from .config import family_defaults
    from .profiles import profile_overrides

    if args.markdown:
        print(config_reference_markdown(), end="")
        return 0
    for key, spec, default in config_fields():
        flag = spec.metadata.get("flag")
        print(f"{key:28s} {default!r:24s} {flag or '':22s} {spec.metadata.get('help', '')}")
    print()
    for name in PROFILES.names():
        print(f"--profile {name}: {_settings(profile_overrides(name))}")
    for name in MODEL_FAMILIES.names():
        if family_defaults(name):
            print(f"--model {name} changes these defaults: {_settings(family_defaults(name))}")
    print()
    for name, registry in _REGISTRIES:
        print(f"{name}: {', '.join(registry.names())}")
    return 0


def _config_flags() -> dict[str, str]:
    """config key -> the option that sets it in ``mmsent train`` (the fields' ``flag`` and the data options)."""
    parser = argparse.ArgumentParser()
    _train_arguments(parser)
    return {action.dest[4:]: " / ".join(action.option_strings) for action in parser._actions
            if action.dest.startswith("cfg:")}


def _allowed_values_text(key: str, spec, kind) -> str:
    """The values a config key takes, in words, for the reference."""
    open_registries = {"text.name": TEXT_ENCODERS, "image.name": IMAGE_ENCODERS}
    allowed = allowed_values(key, spec)
    if allowed is not None:
        detected = "`\"\"` (detected from `--data`), " if key == "data.format" else ""
        return detected + ", ".join(f"`{name}`" for name in allowed)
    if key in open_registries:
        return ", ".join(f"`{name}`" for name in open_registries[key].names()) + ", a Hugging Face id or a local folder"
    if kind is bool:
        return "`true`, `false`"
    if kind is list or typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind) or (str,)
        return {int: "integers", float: "numbers", str: "names"}[item] + ", comma-separated"
    return {int: "an integer", float: "a number", str: "text"}.get(kind, type_name(kind))


def _code_settings(overrides: dict) -> str:
    """Settings as code spans, each as ``--set`` takes it (JSON for a number, a bool or a list)."""
    return ", ".join(f"`{key}={value if isinstance(value, str) else json.dumps(value)}`"
                     for key, value in overrides.items())


def config_reference_markdown() -> str:
    """``mmsent config --markdown``: every config key with its flag, default, allowed values and help (from the
    dataclass field metadata), then the profiles, the model families' own defaults and the registered names."""
    from .config import family_defaults
    from .profiles import profile_overrides

    flags, kinds = _config_flags(), config_types()
    lines = ["<!-- generated by 'mmsent config --markdown > docs/config-reference.md': edit the help texts in "
             "src/mmsent/config.py, not this page -->", "", "# Configuration reference", "",
             "Every key of a run's `config.json`. Each is set by `--set KEY=VALUE`, by a `--config FILE` JSON (nested "
             "as in `config.json`, or dotted keys), and the most used by the flag shown; flags override `--set`, "
             "which overrides `--config`, which overrides `--profile`. The default is the value in `config.json`.",
             "", "- [Keys](#keys)", "- [Profiles](#profiles)", "- [Model families](#model-families)",
             "- [Registered names](#registered-names)", "", "## Keys", "",
             "| key | flag | default | values | what it does |", "| --- | --- | --- | --- | --- |"]
    for key, spec, default in config_fields():
        cells = (f"`{key}`", f"`{flags[key]}`" if key in flags else "", f"`{json.dumps(default)}`",
                 _allowed_values_text(key, spec, kinds[key]), spec.metadata.get("help", ""))
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    lines += ["", "## Profiles", "", "`--profile NAME` applies these settings over the defaults.", ""]
    for name in PROFILES.names():
        summary = " ".join((PROFILES.get(name).__doc__ or "").split()).replace("``", "`")
        lines.append(f"- `{name}`: {summary} Sets {_code_settings(profile_overrides(name))}.")
    lines += ["", "## Model families", "", "`--model NAME` chooses the family; some change defaults of their own "
              "(flags, `--set` and `--config` still override them).", ""]
    for name in MODEL_FAMILIES.names():
        changed = family_defaults(name)
        lines.append(f"- `{name}`: " + (f"changes {_code_settings(changed)}." if changed else "the defaults above."))
    lines += ["", "## Registered names", ""]
    lines += [f"- {name}: {', '.join(f'`{entry}`' for entry in registry.names())}" for name, registry in _REGISTRIES]
    return "\n".join(lines) + "\n"


INTERNAL_ERROR = 3  # exit status of a bug (2 is a user error, as for argparse's usage errors)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code.

    A :class:`~mmsent.errors.UserError` (bad data, flags, a run folder, a missing package) or a file that cannot be
    read or written prints one line and returns 2. Anything else is a bug: its traceback is printed and 3 returned.
    ``MMSENT_DEBUG=1`` lets every exception through with its traceback.
    """
    from . import TRAIN_EXTRAS, load_plugins

    argv = sys.argv[1:] if argv is None else list(argv)
    named = next((word for word in argv if not word.startswith("-")), None)
    missing = None
    if named not in COMMANDS or not COMMANDS[named].base:  # a base command loads the plugins when a run needs them
        try:
            load_plugins()
        except ImportError as error:  # a base install: no PyTorch
            missing = error
    parser = build_parser(only=named if named in COMMANDS and COMMANDS[named].base else None)
    args = parser.parse_args(argv)
    try:
        if missing is not None and not COMMANDS[args.command].base:
            from .errors import PackageError

            raise PackageError(f"'mmsent {args.command}' needs the training extras ({missing.name} is not "
                               f"installed): {TRAIN_EXTRAS}")
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if os.environ.get("MMSENT_DEBUG"):
            raise
        message = _user_message(error)
        if message is None:
            traceback.print_exc()
            print(f"mmsent {args.command}: internal error ({type(error).__name__}): this is a bug in mmsent, not "
                  "in what you gave it; please report it with the traceback above", file=sys.stderr)
            return INTERNAL_ERROR
        print(f"mmsent {args.command}: error: {message}", file=sys.stderr)
        return 2


def _user_message(error: Exception) -> str | None:
    """The one-line message of an error that is the user's to fix, or None for a bug."""
    from .errors import UserError

    if isinstance(error, UserError):
        return str(error)
    if isinstance(error, OSError) and error.filename is not None:  # a path the user gave: missing, denied, disk full
        return f"{error.filename}: {error.strerror or error}"
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return f"out of memory ({error})\nhint: lower --batch-size, or use fewer --text-train-layers"
    return None
