"""The table format: one row per post in CSV, TSV, JSON Lines or Parquet (read with pandas).

Columns (:class:`TableOptions`, config keys ``data.*``): ``text`` (inline), ``image`` (a path relative to the table's folder), ``label`` (empty or
``null`` = a post to predict) and ``id`` (absent = row numbers, counted from 1 without the header). A table without
a text column or without an image column is a one-modality data set (every post rests on the other one; each post
is flagged as lacking it); one without either is refused. Image paths that are absolute or leave the table's folder
(``..``) are refused unless ``allow_outside_paths``; the check is on the path as written (links are followed).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from typing import Callable, Iterator

from ..config import option
from ..errors import PackageError
from ..registry import TABLE_SUFFIXES
from .formats import DataSource, PartRead, register_format
from .posts import NULL_TAGS, SAFE_GUID, DataError, Post, Problem, first_occurrence, normalise_label

BAD_LINE = re.compile(r"Skipping line (\d+): (.*)")


def _csv_options(sep: str) -> dict:
    """How every CSV/TSV read parses: cells as strings, blank lines kept as rows, malformed lines warned about."""
    return dict(sep=sep, dtype=str, keep_default_na=False, skip_blank_lines=False, on_bad_lines="warn",
                encoding="utf-8")


def _bad_lines(caught, name: str) -> list[Problem]:
    """The malformed lines pandas warned about and skipped, as fatal problems naming each line."""
    return [Problem(f"{name}:line {number}", f"{reason.strip()} (unreadable row)", fatal=True)
            for warning in caught for number, reason in BAD_LINE.findall(str(warning.message))]


def _read_delimited(path: Path, sep: str):
    """CSV/TSV as strings; every malformed line becomes a fatal problem (pandas warns and skips it)."""
    import pandas as pd

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frame = pd.read_csv(path, **_csv_options(sep))
    return frame, _bad_lines(caught, path.name)


def _read_json(path: Path):
    """JSON Lines (or, for ``.json``, an array of objects); unreadable lines are found and named."""
    import pandas as pd

    array = path.suffix.lower() == ".json" and path.read_text(encoding="utf-8").lstrip().startswith("[")
    try:
        return pd.read_json(path, lines=not array, dtype=False, encoding="utf-8"), []
    except ValueError as error:
        return None, _bad_json_lines(path) or [Problem(path.name, f"not readable as JSON: {error}", fatal=True)]


def _json_line(line: str, number: int, name: str) -> dict | Problem | None:
    """One JSON Lines line: its object, the fatal problem naming the line, or None for a blank line."""
    try:
        value = json.loads(line) if line.strip() else None
        if value is not None and not isinstance(value, dict):
            raise ValueError("not a JSON object")
        return value
    except ValueError as error:
        return Problem(f"{name}:line {number}", f"unreadable row ({error})", fatal=True)


def _bad_json_lines(path: Path) -> list[Problem]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [p for n, line in enumerate(lines, start=1) if isinstance(p := _json_line(line, n, path.name), Problem)]


def _read_parquet(path: Path):
    import pandas as pd

    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise PackageError("reading Parquet needs pyarrow: pip install pyarrow") from None
    return pd.read_parquet(path), []


def load_frame(path: Path):
    """(DataFrame or None, problems) of a table file; text must be UTF-8."""
    try:
        return TABLE_SUFFIXES.get(path.suffix.lower()).read(path)
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


def column_problems(name: str, columns: list[str], config) -> list[Problem]:
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


def row_id(values: dict, number: int, config) -> str | None:
    """A row's id cell as written (None if empty), or its row number where the table has no id column."""
    return values[config.id_column] if config.id_column in values else str(number)


def _row_post(values: dict, number: int, name: str, table_dir: Path, config) -> Post | Problem:
    """One row -> a Post, or the fatal problem naming the row and column."""
    where = f"{name}:row {number}"
    guid = row_id(values, number, config)
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
    return source.path.is_file() and source.path.suffix.lower() in TABLE_SUFFIXES


def frame_rows(frame, start: int = 1):
    """(row number, {column: cell}) of every row of a DataFrame, numbered from ``start``."""
    columns = [str(c) for c in frame.columns]
    for number, row in enumerate(frame.itertuples(index=False, name=None), start=start):
        yield number, {column: cell(value) for column, value in zip(columns, row)}


def row_posts(rows, name: str, table_dir: Path, config, part: str, problems: list[Problem], seen: dict | None = None):
    """Yield ``(id as written, Post or fatal Problem)`` for every row of ``part`` ("train": labelled, "test": unlabelled,
    "all") among ``rows`` ((number, {column: cell}) pairs), in order. Empty rows, and with ``seen`` (guid -> first
    row) repeated ids, are appended to ``problems`` instead."""
    for number, values in rows:
        if all(v is None for v in values.values()):
            problems.append(Problem(f"{name}:row {number}", "empty row (dropped)", kind="row_dropped"))
            continue
        post = _row_post(values, number, name, table_dir, config)
        labelled = (values.get(config.label_column) is not None
                    and normalise_label(values[config.label_column]) not in NULL_TAGS)
        in_part = part == "all" or labelled == (part == "train")
        if isinstance(post, Problem):
            if in_part:
                yield row_id(values, number, config), post
        elif (seen is None or first_occurrence(post.guid, post.label, number, seen, post.where,
                                                problems if in_part else [], unit="row")) and in_part:
            yield post.guid, post


def table_dir_of(path: Path) -> Path:
    """The folder a table's relative image paths start from."""
    return Path(os.path.normpath(path.parent.absolute()))


@dataclass
class TableChunk:
    """Consecutive rows of a table read in chunks: the rows (numbered as the whole-table read numbers them, from
    ``start``) and the problems of the lines read with them (malformed lines, which are no row)."""

    frame: object  # a pandas DataFrame
    start: int
    problems: list[Problem]

    def __len__(self) -> int:
        return len(self.frame)

    def rows(self):
        return frame_rows(self.frame, self.start)


def _csv_frames(path: Path, sep: str, size: int):
    import pandas as pd

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for frame in pd.read_csv(path, chunksize=size, **_csv_options(sep)):
            yield frame, _bad_lines(caught, path.name)
            caught.clear()


def _jsonl_columns(path: Path) -> list[str]:
    """The keys of every readable line, in order of first appearance: the columns a whole-table read gives."""
    keys: dict[str, None] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if isinstance(row := _json_line(line, number, path.name), dict):
                keys.update(dict.fromkeys(row))
    return list(keys)


def _jsonl_frames(path: Path, size: int):
    """JSON Lines read line by line (an unreadable line is named, and the rest still read). A first pass finds the
    table's columns, so that every chunk has them all, as the whole-table read does: a key missing from a row is
    an empty cell, and a chunk of unreadable lines only is an empty frame with the table's columns."""
    import pandas as pd

    columns = _jsonl_columns(path)
    with open(path, encoding="utf-8") as handle:
        lines = enumerate(handle, start=1)
        while batch := list(itertools.islice(lines, size)):
            parsed = [_json_line(line, number, path.name) for number, line in batch]
            yield (pd.DataFrame([p for p in parsed if isinstance(p, dict)], columns=columns, dtype=object),
                   [p for p in parsed if isinstance(p, Problem)])


def _parquet_frames(path: Path, size: int):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise PackageError("reading Parquet needs pyarrow: pip install pyarrow") from None
    for batch in pq.ParquetFile(path).iter_batches(batch_size=size):
        yield batch.to_pandas(), []


def _whole_frames(path: Path, size: int):
    """A table format that cannot be read in parts (a .json array): read whole, then cut."""
    frame, problems = load_frame(path)
    if frame is None:
        raise DataError(f"{path} cannot be used:\n  " + "\n  ".join(str(p) for p in problems))
    for start in range(0, max(len(frame), 1), size):
        yield frame.iloc[start:start + size], problems if start == 0 else []


@dataclass(frozen=True)
class TableSuffix:
    """How one kind of table file is read whole, read in chunks of rows, and written (``mmsent convert``)."""

    read: Callable[[Path], tuple]  # path -> (DataFrame or None, problems)
    chunks: Callable[[Path, int], Iterator[tuple]]  # (path, rows per chunk) -> (DataFrame, problems) per chunk
    write: Callable[[object, Path], None]  # (DataFrame with the default columns, path)


def register_suffix(suffix: str, read, chunks, write) -> TableSuffix:
    """Register how tables whose file name ends in ``suffix`` (lowercase, with its dot) are read and written."""
    return TABLE_SUFFIXES.register(suffix)(TableSuffix(read, chunks, write))


def _write_delimited(frame, path: Path, sep: str) -> None:
    frame.to_csv(path, index=False, sep=sep, encoding="utf-8")


def _write_json_lines(frame, path: Path) -> None:
    """One object a line, as written (pandas would escape every "/")."""
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in frame.to_dict("records")),
                    encoding="utf-8")


def _write_parquet(frame, path: Path) -> None:
    try:
        frame.to_parquet(path, index=False)
    except ImportError:
        raise PackageError("writing Parquet needs pyarrow: pip install pyarrow") from None


register_suffix(".csv", lambda p: _read_delimited(p, ","), lambda p, n: _csv_frames(p, ",", n),
                lambda f, p: _write_delimited(f, p, ","))
register_suffix(".tsv", lambda p: _read_delimited(p, "\t"), lambda p, n: _csv_frames(p, "\t", n),
                lambda f, p: _write_delimited(f, p, "\t"))
register_suffix(".jsonl", _read_json, _jsonl_frames, _write_json_lines)
register_suffix(".json", _read_json, _whole_frames, _write_json_lines)  # JSON Lines, or an array of objects
register_suffix(".parquet", _read_parquet, _parquet_frames, _write_parquet)


@dataclass
class TableOptions:
    """The table format's options (config keys ``data.*``): its column names and where its image paths may lead."""

    text_column: str = option("text", help="table column of each post's text (inline)")
    image_column: str = option("image", help="table column of each post's image path (relative to the table's "
                                             "folder)")
    label_column: str = option("label", help="table column of each post's label (empty = a post to predict)")
    id_column: str = option("id", help="table column of each post's id (absent = row numbers)")
    allow_outside_paths: bool = option(False, help="accept table image paths that are absolute or leave the table's "
                                                   "folder")


@register_format("table", detect=_is_table, config=TableOptions,
                 layout=f"a table file ({', '.join(TABLE_SUFFIXES.names())}) with columns id, label, text, image "
                        "(see --text-column and the others)")
def read_table(source: DataSource, part: str) -> PartRead:
    """The labelled rows (``train``) or the unlabelled rows (``test``) of the table, in table order."""
    path, config = source.path, source.config
    table_dir = table_dir_of(path)
    frame, problems = load_frame(path)
    if frame is None:
        return PartRead([], problems, table_dir)
    columns = [str(c) for c in frame.columns]
    problems += column_problems(path.name, columns, config)
    posts = []
    for _, item in row_posts(frame_rows(frame), path.name, table_dir, config, part, problems, seen={}):
        (problems if isinstance(item, Problem) else posts).append(item)
    if part == "train" and not posts:
        problems.append(Problem(path.name, f"no labelled rows (label column {config.label_column!r}; columns "
                                           f"found: {', '.join(columns)})", fatal=True))
    return PartRead(posts, problems, table_dir)


def table_chunks(path: Path, size: int):
    """The table in chunks of ``size`` rows (bounded memory; a .json array is read whole), as
    :class:`TableChunk`; DataError if the file cannot be read on."""
    start = 1
    try:
        for frame, problems in TABLE_SUFFIXES.get(path.suffix.lower()).chunks(path, size):
            yield TableChunk(frame, start, problems)
            start += len(frame)
    except UnicodeDecodeError as error:
        raise DataError(f"{path.name}: not UTF-8 text after row {start - 1} ({error}); save the table as UTF-8") from None
    except (PackageError, DataError):
        raise
    except Exception as error:  # pandas and pyarrow raise many types for a broken file
        raise DataError(f"{path.name}: unreadable after row {start - 1} ({type(error).__name__}: {error})") from None
