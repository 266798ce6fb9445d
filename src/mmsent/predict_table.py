"""Predicting a table of any size in bounded memory: ``mmsent predict --data TABLE --out OUT.csv|OUT.jsonl``.

The table is read in chunks (:func:`mmsent.data.table.table_chunks`); each chunk's rows to predict become posts
through the table format's own validation (:func:`mmsent.data.table.row_posts`), are predicted in memory without
the feature cache, and their output rows are appended to OUT, in table order: ``id, label, p_<class>...`` (the
run's classes) and ``error``. A row that fails validation (an unsafe id, a refused image path) is written with its
problem, naming row and column, in ``error`` and no label; anything that is no row (an unreadable line), empty rows
and data warnings are counted in the summary, which lists the first ones. Labelled rows are left out (counted)
unless ``all_rows``. Ids are not remembered across chunks, so that memory stays bounded: a repeated id is predicted
again.

After each chunk OUT is flushed and fsynced, then ``OUT.progress.json`` records how far it got (atomically); an
interrupted run continues (``resume``) after its last finished chunk, and the file is removed once OUT is complete.
Under torchrun, chunk ``i`` goes to process ``i % N``, which writes ``OUT.shard-K-of-N<suffix>``; process 0 merges
the shards back into table order once every process is done, then removes them.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .decision import decide
from .atomic import atomic_path, atomic_write_json, atomic_write_text
from .data.dataset import Split
from .data.formats import DataSource
from .data.posts import DataError, Post, Problem
from .data.table import column_problems, row_posts, table_chunks, table_dir_of
from .distributed import Shard, current_shard
from .errors import ConfigError
from .prediction import Predictor
from .progress import progress, silenced

OUTPUT_SUFFIXES = (".csv", ".jsonl")
LISTED = 20  # problems kept word for word in a summary; the others are only counted
COPY_BYTES = 1 << 20


def output_columns(classes) -> list[str]:
    return ["id", "label", *[f"p_{name}" for name in classes], "error"]


def _render(suffix: str, columns: list[str], rows: list[list]) -> str:
    """Output rows ([id, label, probability strings..., error]; None = empty) as CSV or JSON Lines text."""
    if suffix.lower() == ".csv":
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        return buffer.getvalue()
    numeric = range(2, len(columns) - 1)  # probabilities: already number text

    def value(i: int, cell) -> str:
        return cell if i in numeric and cell is not None else json.dumps(cell)

    return "".join("{" + ", ".join(f"{json.dumps(name)}: {value(i, cell)}" for i, (name, cell) in
                                   enumerate(zip(columns, row))) + "}\n" for row in rows)


def _header(suffix: str, columns: list[str]) -> str:
    return _render(suffix, columns, [columns]) if suffix.lower() == ".csv" else ""


def prediction_rows(guids, probs: np.ndarray, classes, offsets=None) -> list[list]:
    """Output rows of predicted posts: id, label (by the decision rule's ``offsets``; None: the most probable
    class), each probability as the shortest float32 text."""
    labels = decide(probs, offsets) if len(probs) else []
    return [[guid, classes[int(label)], *map(str, row.astype(np.float32)), None]
            for guid, row, label in zip(guids, probs, labels)]


def write_rows_file(path: Path, guids, probs: np.ndarray, classes, offsets=None) -> None:
    """A whole part's predictions as OUT.csv / OUT.jsonl in one go, atomically (data that is no table)."""
    columns = output_columns(classes)
    atomic_write_text(path, _header(path.suffix, columns) + _render(path.suffix, columns,
                                                                     prediction_rows(guids, probs, classes, offsets)))


@dataclass
class Summary:
    """What happened to the rows (counts, so bounded), and the first problems word for word."""

    predicted: int = 0
    errors: int = 0  # rows written with an error instead of a label
    left_out: int = 0  # labelled rows, not predicted without all_rows
    counts: dict = field(default_factory=dict)  # "error", a warning kind (posts.KINDS) or "warning" -> count
    listed: list = field(default_factory=list)

    def add(self, problems: list[Problem]) -> None:
        for problem in problems:
            kind = "error" if problem.fatal else problem.kind or "warning"
            self.counts[kind] = self.counts.get(kind, 0) + 1
            if len(self.listed) < LISTED:
                self.listed.append(str(problem))

    def merge(self, other: "Summary") -> None:
        self.predicted, self.errors, self.left_out = (self.predicted + other.predicted, self.errors + other.errors,
                                                      self.left_out + other.left_out)
        for kind, count in other.counts.items():
            self.counts[kind] = self.counts.get(kind, 0) + count
        self.listed = (self.listed + other.listed)[:LISTED]

    def lines(self) -> list[str]:
        """The summary in words: rows, problem counts, then the first problems."""
        lines = [f"{self.predicted} rows predicted, {self.errors} rows written with an error instead (column "
                 f"'error'), {self.left_out} labelled rows left out (--all-rows predicts them)"]
        if self.counts:
            total = sum(self.counts.values())
            lines.append(f"{total} problems ({', '.join(f'{k}: {v}' for k, v in sorted(self.counts.items()))}); "
                         f"{'first ones' if total > len(self.listed) else 'all'}:")
            lines += [f"  {problem}" for problem in self.listed]
        return lines


@dataclass
class TableJob:
    """One prediction of a table: the run, the input, the output and the options that shape the output."""

    run: Predictor
    source: DataSource
    out: Path
    chunk_size: int = 1000
    all_rows: bool = False

    @property
    def columns(self) -> list[str]:
        return output_columns(self.run.classes)

    def identity(self, shard: Shard) -> dict:
        """What a resumed run must share with the interrupted one (as JSON would give it back)."""
        stat = self.source.path.stat()
        return json.loads(json.dumps({
            "input": str(self.source.path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "run": str(Path(self.run.run_dir).resolve()) if self.run.run_dir else None, "columns": self.columns,
            "data": asdict(self.source.config), "chunk_size": self.chunk_size, "all_rows": self.all_rows,
            "shard": [shard.rank, shard.world_size]}))


@dataclass
class Progress:
    """How far one output file got, saved as ``<file>.progress.json`` after every chunk."""

    identity: dict
    header_bytes: int = 0
    bytes: int = 0  # the file's size after its last finished chunk
    chunks_done: int = 0  # chunks of the table handled (by this process, or left to another one)
    chunk_bytes: list = field(default_factory=list)  # bytes this file holds of each chunk it predicted
    summary: Summary = field(default_factory=Summary)
    complete: bool = False

    def save(self, path: Path) -> None:
        atomic_write_json(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> "Progress":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(**{**data, "summary": Summary(**data["summary"])})
        except (ValueError, TypeError, KeyError) as error:
            raise DataError(f"{path} is not a progress file of mmsent predict ({error}); give --overwrite") from None


def progress_path(path: Path) -> Path:
    return path.with_name(path.name + ".progress.json")


def shard_path(out: Path, rank: int, world: int) -> Path:
    return out.with_name(f"{out.stem}.shard-{rank}-of-{world}{out.suffix}")


def check_output(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse what cannot be written before anything is loaded: another suffix, an existing OUT without a flag."""
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ConfigError(f"--out must end in {' or '.join(OUTPUT_SUFFIXES)} to write a table's predictions")
    if resume and overwrite:
        raise ConfigError("--resume continues an interrupted prediction and --overwrite starts again: give one")
    if out.exists() and not (resume or overwrite):
        raise ConfigError(f"{out} exists: give --resume to continue an interrupted prediction into it, or "
                          "--overwrite to replace it")


def _open_progress(job: TableJob, target: Path, shard: Shard, resume: bool, overwrite: bool) -> Progress:
    """The progress of ``target``: an interrupted run's (``resume``: the file cut back to its last finished chunk),
    or a new one with the header written."""
    sidecar, identity = progress_path(target), job.identity(shard)
    if target.exists() and not overwrite:
        check_output(target, resume, overwrite)
        if not sidecar.exists():
            raise ConfigError(f"{target} exists and no {sidecar.name} says it is unfinished: give --overwrite to "
                              "predict again")
        state = Progress.load(sidecar)
        differs = [key for key in identity if state.identity.get(key) != identity[key]]
        if differs:
            raise ConfigError(f"{target} was written by another command ({', '.join(differs)} differ); give "
                              "--overwrite to start again")
        if target.stat().st_size < state.bytes:
            raise DataError(f"{target} is shorter than {sidecar.name} says; give --overwrite to start again")
        os.truncate(target, state.bytes)
        return state
    header = _header(target.suffix, job.columns).encode("utf-8")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as handle:
        handle.write(header)
        handle.flush()
        os.fsync(handle.fileno())
    state = Progress(identity, header_bytes=len(header), bytes=len(header))
    state.save(sidecar)
    return state


def _chunk_output(job: TableJob, chunk, summary: Summary) -> str:
    """One chunk's output rows, in table order; its rows and problems counted in ``summary``."""
    name, config, table_dir = job.source.path.name, job.source.config, table_dir_of(job.source.path)
    problems = list(chunk.problems)
    items = list(row_posts(chunk.rows(), name, table_dir, config, "all" if job.all_rows else "test", problems))
    dropped = len(problems) - len(chunk.problems)  # empty rows
    posts = [item for _, item in items if isinstance(item, Post)]
    split = Split(table_dir, posts)
    with silenced():
        probs = job.run.predict_split(split, log=lambda *_: None, cache=False) if posts else None
    predicted = iter(prediction_rows([p.guid for p in posts], probs, job.run.classes, job.run.decision_offsets)
                     if posts else [])
    rows = [next(predicted) if isinstance(item, Post) else [guid, None, *[None] * len(job.run.classes), str(item)]
            for guid, item in items]
    summary.add(problems + [item for _, item in items if isinstance(item, Problem)] + split.problems)
    summary.predicted += len(posts)
    summary.errors += len(items) - len(posts)
    summary.left_out += len(chunk) - len(items) - dropped
    return _render(job.out.suffix, job.columns, rows)


def _check_columns(job: TableJob, chunk, state: Progress, shard: Shard) -> None:
    """The first chunk's columns: neither modality's column is fatal; one missing is counted once."""
    problems = column_problems(job.source.path.name, [str(c) for c in chunk.frame.columns], job.source.config)
    fatal = [p for p in problems if p.fatal]
    if fatal:
        raise DataError(f"{job.source.path} cannot be used: {fatal[0].message}")
    if state.chunks_done == 0 and shard.owns(0):
        state.summary.add(problems)


def write_part(job: TableJob, target: Path, shard: Shard, resume: bool = False, overwrite: bool = False
               ) -> tuple[Progress, int]:
    """Predict this process's chunks of the table into ``target``, saving the progress after each; the final
    progress and the number of rows handled here (a resumed run skips the chunks already done)."""
    state = _open_progress(job, target, shard, resume, overwrite)
    if state.complete:
        return state, 0
    handled = 0
    total = _parquet_rows(job.source.path) if shard.world_size == 1 else None
    bar = progress(None, desc="predict", unit="row", total=total)
    with bar, open(target, "ab") as handle:
        for index, chunk in enumerate(table_chunks(job.source.path, job.chunk_size)):
            if index == 0:
                _check_columns(job, chunk, state, shard)
            if index < state.chunks_done or not shard.owns(index):
                continue
            data = _chunk_output(job, chunk, state.summary).encode("utf-8")
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
            state.bytes, state.chunks_done = state.bytes + len(data), index + 1
            state.chunk_bytes.append(len(data))
            state.save(progress_path(target))
            handled += len(chunk)
            bar.update(len(chunk))
    state.complete = True
    state.save(progress_path(target))
    return state, handled


def _parquet_rows(path: Path) -> int | None:
    """A Parquet table's row count from its footer (other formats are not counted ahead: None)."""
    if path.suffix.lower() != ".parquet":
        return None
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def merge_shards(out: Path, world: int) -> Summary:
    """After every process finished its shard: the shards' chunks interleaved back into table order (chunk ``i``
    is shard ``i % world``'s) as ``out``, written atomically; then the shards are removed. Their summaries, added."""
    paths = [shard_path(out, rank, world) for rank in range(world)]
    states = [Progress.load(progress_path(path)) for path in paths]
    if not all(state.complete for state in states):
        raise DataError(f"cannot merge the shards of {out}: not every process finished its shard")
    summary = Summary()
    with atomic_path(out) as tmp, open(tmp, "wb") as dest:
        handles = [open(path, "rb") for path in paths]
        try:
            dest.write(handles[0].read(states[0].header_bytes))
            for handle, state in zip(handles[1:], states[1:]):
                handle.seek(state.header_bytes)
            for index in range(sum(len(state.chunk_bytes) for state in states)):
                _copy(handles[index % world], dest, states[index % world].chunk_bytes[index // world])
        finally:
            for handle in handles:
                handle.close()
    for path, state in zip(paths, states):
        summary.merge(state.summary)
        path.unlink()
        progress_path(path).unlink()
    return summary


def _copy(source, dest, size: int) -> None:
    """``size`` bytes from ``source`` to ``dest``, a bounded piece at a time."""
    while size > 0:
        piece = source.read(min(size, COPY_BYTES))
        if not piece:
            raise DataError(f"{source.name} is shorter than its progress file says")
        dest.write(piece)
        size -= len(piece)


@dataclass
class TableResult:
    """What ``predict_table`` did: the summary of every row (None on a process other than torchrun's 0), the rows
    this process handled and in how many seconds."""

    summary: Summary | None
    rows: int
    seconds: float


def predict_table(job: TableJob, resume: bool = False, overwrite: bool = False, shard: Shard | None = None
                  ) -> TableResult:
    """Predict the table of ``job`` into ``job.out`` (see the module's docstring); under torchrun, this process's
    shard, then process 0 merges every shard into ``job.out``."""
    check_output(job.out, resume, overwrite)
    shard = shard or current_shard()
    start = time.perf_counter()
    if shard.world_size == 1:
        state, rows = write_part(job, job.out, shard, resume, overwrite)
        progress_path(job.out).unlink()
        return TableResult(state.summary, rows, time.perf_counter() - start)
    if job.out.exists() and not overwrite:
        raise ConfigError(f"{job.out} exists (its shards were merged): give --overwrite to predict again")
    _, rows = write_part(job, shard_path(job.out, shard.rank, shard.world_size), shard, resume, overwrite)
    shard.barrier()
    summary = merge_shards(job.out, shard.world_size) if shard.is_main else None
    return TableResult(summary, rows, time.perf_counter() - start)
