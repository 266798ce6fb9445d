"""The table format: one row per post in CSV, TSV, JSON Lines or Parquet (read with pandas).

Columns (``DataConfig``): ``text`` (inline), ``image`` (a path relative to the table's folder), ``label`` (empty or
``null`` = a post to predict) and ``id`` (absent = row numbers, counted from 1 without the header). A table without
a text column or without an image column is a one-modality data set (every post rests on the other one; each post
is flagged as lacking it); one without either is refused. Image paths that are absolute or leave the table's folder
(``..``) are refused unless ``allow_outside_paths``; the check is on the path as written (links are followed).
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from pathlib import Path

from ..errors import PackageError
from .formats import DataSource, PartRead, register_format
from .posts import Post, normalise_label
from .records import NULL_TAGS, SAFE_GUID, Problem, Record, first_occurrence

BAD_LINE = re.compile(r"Skipping line (\d+): (.*)")


def _read_delimited(path: Path, sep: str):
    """CSV/TSV as strings; every malformed line becomes a fatal problem (pandas warns and skips it)."""
    import pandas as pd

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, skip_blank_lines=False,
                            on_bad_lines="warn", encoding="utf-8")
    problems = [Problem(f"{path.name}:line {number}", f"{reason.strip()} (unreadable row)", fatal=True)
                for warning in caught for number, reason in BAD_LINE.findall(str(warning.message))]
    return frame, problems


def _read_json(path: Path):
    """JSON Lines (or, for ``.json``, an array of objects); unreadable lines are found and named."""
    import pandas as pd

    array = path.suffix.lower() == ".json" and path.read_text(encoding="utf-8").lstrip().startswith("[")
    try:
        return pd.read_json(path, lines=not array, dtype=False, encoding="utf-8"), []
    except ValueError as error:
        return None, _bad_json_lines(path) or [Problem(path.name, f"not readable as JSON: {error}", fatal=True)]


def _bad_json_lines(path: Path) -> list[Problem]:
    problems = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            if line.strip() and not isinstance(json.loads(line), dict):
                raise ValueError("not a JSON object")
        except ValueError as error:
            problems.append(Problem(f"{path.name}:line {number}", f"unreadable row ({error})", fatal=True))
    return problems


def _read_parquet(path: Path):
    import pandas as pd

    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise PackageError("reading Parquet needs pyarrow: pip install pyarrow") from None
    return pd.read_parquet(path), []


TABLE_READERS = {".csv": lambda p: _read_delimited(p, ","), ".tsv": lambda p: _read_delimited(p, "\t"),
                 ".jsonl": _read_json, ".json": _read_json, ".parquet": _read_parquet}


def load_frame(path: Path):
    """(DataFrame or None, problems) of a table file; text must be UTF-8."""
    try:
        return TABLE_READERS[path.suffix.lower()](path)
    except UnicodeDecodeError as error:
        return None, [Problem(path.name, f"not UTF-8 text ({error}); save the table as UTF-8", fatal=True)]
    except PackageError:
        raise
    except Exception as error:  # pandas and pyarrow raise many types for a broken file
        return None, [Problem(path.name, f"unreadable table ({type(error).__name__}: {error})", fatal=True)]


def cell(value) -> str | None:
    """A cell as text: None for empty or missing; whole floats (JSON ids next to a gap) without '.0'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value)
    return text if text.strip() else None


def image_location(value: str, table_dir: Path, allow_outside: bool) -> Path | str:
    """The image file a cell names, or why it is refused (a str)."""
    path = Path(value)
    full = Path(os.path.normpath(path if path.is_absolute() else table_dir / path))
    if allow_outside or (not path.is_absolute() and full.is_relative_to(table_dir)):
        return full
    return (f"image path {value!r} is absolute or leaves the table's folder; refused (move the images under "
            f"{table_dir}, or give --allow-outside-paths)")


def _column_problems(name: str, columns: list[str], config) -> list[Problem]:
    """The table as a whole: neither modality is fatal, one missing a warning."""
    found = ", ".join(map(str, columns)) or "none"
    missing = [(c, f) for c, f in ((config.text_column, "--text-column"), (config.image_column, "--image-column"))
               if c not in columns]
    if len(missing) == 2:
        return [Problem(name, f"no text column {config.text_column!r} and no image column {config.image_column!r} "
                              f"(name them with --text-column / --image-column); columns found: {found}", fatal=True)]
    return [Problem(name, f"no column {column!r} ({flag}): every post is "
                          f"{'image' if flag == '--text-column' else 'text'} only; columns found: {found}")
            for column, flag in missing]


def _row_post(values: dict, number: int, name: str, table_dir: Path, config) -> Post | Problem:
    """One row -> a Post, or the fatal problem naming the row and column."""
    where = f"{name}:row {number}"
    guid = values.get(config.id_column, str(number)) if config.id_column in values else str(number)
    if guid is None or not SAFE_GUID.match(guid.strip()) or guid.strip() in (".", ".."):
        return Problem(f"{where} ({config.id_column})", f"empty or unsafe id {guid!r} (only letters, digits, '_', "
                                                        "'-', '.')", fatal=True)
    label = normalise_label(values.get(config.label_column) or "")
    post = Post(guid.strip(), None if label in NULL_TAGS else label, where, label_where=f"{where} ({config.label_column})",
                text_where=f"{where} ({config.text_column})", image_where=f"{where} ({config.image_column})")
    if config.text_column in values:
        post.text = values[config.text_column] or ""
    image = values.get(config.image_column)
    if image is not None:
        location = image_location(image, table_dir, config.allow_outside_paths)
        if isinstance(location, str):
            return Problem(post.image_where, location, fatal=True)
        post.image_path = location
    return post


def _is_table(source: DataSource) -> bool:
    return source.path.is_file() and source.path.suffix.lower() in TABLE_READERS


@register_format("table", detect=_is_table, layout=f"a table file ({', '.join(TABLE_READERS)}) with columns "
                                                  "id, label, text, image (see --text-column and the others)")
def read_table(source: DataSource, part: str) -> PartRead:
    """The labelled rows (``train``) or the unlabelled rows (``test``) of the table, in table order."""
    path, config = source.path, source.config
    table_dir = Path(os.path.normpath(path.parent.absolute()))
    frame, problems = load_frame(path)
    if frame is None:
        return PartRead([], problems, table_dir)
    columns = [str(c) for c in frame.columns]
    problems += _column_problems(path.name, columns, config)
    posts, seen = [], {}
    for number, row in enumerate(frame.itertuples(index=False, name=None), start=1):
        values = {column: cell(value) for column, value in zip(columns, row)}
        if all(v is None for v in values.values()):
            problems.append(Problem(f"{path.name}:row {number}", "empty row (dropped)", kind="row_dropped"))
            continue
        post = _row_post(values, number, path.name, table_dir, config)
        in_part = (values.get(config.label_column) is not None
                   and normalise_label(values[config.label_column]) not in NULL_TAGS) == (part == "train")
        if isinstance(post, Problem):
            problems += [post] if in_part else []
        elif first_occurrence(Record(post.guid, post.label), number, seen, post.where, problems if in_part else [],
                              unit="row") and in_part:
            posts.append(post)
    if part == "train" and not posts:
        problems.append(Problem(path.name, f"no labelled rows (label column {config.label_column!r}; columns "
                                           f"found: {', '.join(columns)})", fatal=True))
    return PartRead(posts, problems, table_dir)
