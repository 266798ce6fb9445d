"""Predicting a table in chunks (mmsent.predict_table): the same probabilities as the whole-table path whatever the
chunk size, CSV and JSON Lines outputs, resuming an interrupted run, shards merged in table order, bad rows named."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from helpers import WORDS, needs_pyarrow, train_run
from mmsent.cli import main
from mmsent.data.dataset import open_data
from mmsent.data.formats import DataSource
from mmsent.distributed import Shard
from mmsent.predict import load_run_folder
from mmsent.predict_table import (Progress, TableJob, merge_shards, predict_table, progress_path, shard_path,
                                  write_part)
from test_formats import jpeg, write_table

CLASSES = ("negative", "neutral", "positive")
COLUMNS = ["id", "label", "p_negative", "p_neutral", "p_positive", "error"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_bert_dir, tiny_vit_dir) -> Path:
    """A tiny two-fold run (tiny BERT + tiny ViT) trained on a generated lab folder."""
    from helpers import write_dataset

    root = tmp_path_factory.mktemp("stream")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MMSENT_CACHE_DIR", str(root / "cache"))
        train_run(write_dataset(root / "mvsa"), root / "run", "--text-encoder", tiny_bert_dir, "--image-encoder",
                  tiny_vit_dir, "--set", "image.image_size=32")
    return root / "run"


@pytest.fixture(scope="module")
def run(run_dir):
    with load_run_folder(run_dir) as loaded:
        yield loaded


def table_rows(folder: Path, n: int = 23) -> list[dict]:
    """``n`` rows: every 5th labelled (left out), every 3rd with an image, one image file missing (text only)."""
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        kind = CLASSES[i % 3]
        row = {"id": f"r{i}", "text": f"{WORDS[kind][i % 5]} {WORDS[kind][(i + 2) % 5]} #tag"}
        if i % 5 == 4:
            row["label"] = kind
        if i % 3 == 0:
            (folder / "img" / f"{i}.jpg").write_bytes(jpeg((i * 11 % 256, 40, 200 - i)))
            row["image"] = f"img/{i}.jpg"
        rows.append(row)
    if n > 7:
        rows[7]["image"] = "img/missing.jpg"
    return rows


def read_output(path: Path) -> list[dict]:
    """Rows of OUT.csv or OUT.jsonl as dicts of strings (None for empty) with the columns checked."""
    if path.suffix == ".csv":
        with open(path, newline="") as handle:
            reader = csv.reader(handle)
            assert next(reader) == COLUMNS
            return [{k: v or None for k, v in zip(COLUMNS, row)} for row in reader]
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert all(list(row) == COLUMNS for row in rows)
    return [{k: None if v is None else str(v) for k, v in row.items()} for row in rows]


def probabilities(rows: list[dict]) -> np.ndarray:
    return np.array([[np.float32(row[f"p_{c}"]) for c in CLASSES] for row in rows], dtype=np.float32)


def job(run, table: Path, out: Path, chunk_size: int = 1000, all_rows: bool = False) -> TableJob:
    return TableJob(run, DataSource(table), out, chunk_size, all_rows)


@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
def test_streamed_rows_are_the_whole_table_prediction(run, tmp_path, chunk_size):
    table = write_table(tmp_path / "posts.csv", table_rows(tmp_path))
    split = open_data(table, "test")
    expected = run.predict_split(split, log=lambda *_: None)  # through the feature cache, the whole part at once
    result = predict_table(job(run, table, tmp_path / "out.csv", chunk_size), shard=Shard())
    rows = read_output(tmp_path / "out.csv")
    assert [row["id"] for row in rows] == split.guids == [f"r{i}" for i in range(23) if i % 5 != 4]
    np.testing.assert_array_equal(probabilities(rows), expected.astype(np.float32))
    assert [row["label"] for row in rows] == [CLASSES[i] for i in expected.argmax(1)]
    assert all(row["error"] is None for row in rows)
    assert (result.summary.predicted, result.summary.errors, result.summary.left_out) == (19, 0, 4)
    assert result.summary.counts == {"image_unusable": 12} == {"image_unusable": split.summary()["image_unusable"]}
    assert not progress_path(tmp_path / "out.csv").exists()


@needs_pyarrow
def test_jsonl_and_parquet_give_the_csv_rows_through_the_cli(run_dir, tmp_path, capsys):
    rows = table_rows(tmp_path)
    outputs = {}
    for suffix, out in ((".csv", "a.csv"), (".jsonl", "b.jsonl"), (".parquet", "c.jsonl")):
        table = write_table(tmp_path / f"posts{suffix}", rows)
        assert main(["predict", "--data", str(table), "--run", str(run_dir), "--out", str(tmp_path / out),
                     "--chunk-size", "5", "--all-rows"]) == 0
        outputs[suffix] = read_output(tmp_path / out)
    assert outputs[".csv"] == outputs[".jsonl"] == outputs[".parquet"]
    assert [row["id"] for row in outputs[".csv"]] == [f"r{i}" for i in range(23)]
    printed = capsys.readouterr().out
    assert "23 rows predicted, 0 rows written with an error instead (column 'error'), 0 labelled rows left out" in printed
    assert "rows/s" in printed


class Interrupt(Exception):
    """Stands for the process being killed."""


def test_resume_after_an_interruption_gives_the_uninterrupted_file(run, tmp_path, monkeypatch):
    table = write_table(tmp_path / "posts.jsonl", table_rows(tmp_path))
    predict_table(job(run, table, tmp_path / "whole.jsonl", 4), shard=Shard())
    out = tmp_path / "out.jsonl"
    calls = []
    real = type(run).predict_split

    def dying(self, split, log=print, cache=True):
        calls.append(len(split.records))
        if len(calls) == 3:
            raise Interrupt
        return real(self, split, log, cache)

    monkeypatch.setattr(type(run), "predict_split", dying)
    with pytest.raises(Interrupt):
        predict_table(job(run, table, out, 4), shard=Shard())
    monkeypatch.undo()
    state = Progress.load(progress_path(out))
    assert state.chunks_done == 2 and state.summary.predicted == 7 and not state.complete
    with open(out, "a") as handle:  # a chunk half written when the process died
        handle.write('{"id": "r9", "lab')
    with pytest.raises(Exception, match="exists"):
        predict_table(job(run, table, out, 4), shard=Shard())
    result = predict_table(job(run, table, out, 4), resume=True, shard=Shard())
    assert out.read_bytes() == (tmp_path / "whole.jsonl").read_bytes()
    assert result.rows == 23 - 8 and result.summary.predicted == 19


def test_resume_refuses_another_input_or_chunk_size(run, run_dir, tmp_path, capsys):
    rows = table_rows(tmp_path)
    table = write_table(tmp_path / "posts.csv", rows)
    out = tmp_path / "out.csv"
    write_part(job(run, table, out, 5), out, Shard())  # leaves its progress file, as an interrupted run does
    command = ["predict", "--data", str(table), "--run", str(run_dir), "--out", str(out), "--resume"]
    assert main(command + ["--chunk-size", "7"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == (f"mmsent predict: error: {out} was written by another command (chunk_size differ); give "
                     "--overwrite to start again")
    write_table(table, rows + [{"id": "new", "text": "love"}])
    assert main(command + ["--chunk-size", "5"]) == 2
    assert "was written by another command (size, mtime_ns differ)" in capsys.readouterr().err
    assert main(command[:-1]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"mmsent predict: error: {out} exists: give --resume to continue an interrupted prediction into it, or "
        "--overwrite to replace it")


def test_shards_merge_in_table_order(run, tmp_path, monkeypatch):
    table = write_table(tmp_path / "posts.csv", table_rows(tmp_path))
    predict_table(job(run, table, tmp_path / "whole.csv", 3), shard=Shard())
    monkeypatch.setattr(Shard, "barrier", lambda self: None)  # the ranks run one after the other here
    out = tmp_path / "out.csv"
    results = [predict_table(job(run, table, out, 3), shard=Shard(rank, 3)) for rank in (2, 1, 0)]
    assert out.read_bytes() == (tmp_path / "whole.csv").read_bytes()
    assert [r.summary for r in results[:2]] == [None, None] and results[2].summary.predicted == 19
    assert sorted(p.name for p in tmp_path.iterdir() if "shard" in p.name) == []


def test_merge_interleaves_chunks_by_rank(tmp_path):
    out = tmp_path / "m.csv"
    chunks = {0: ["h\n", "a\n", "c\nd\n", "e\n"], 1: ["h\n", "b\n", ""]}  # chunks 0 2 4 on rank 0, 1 3 on rank 1
    for rank, parts in chunks.items():
        shard_path(out, rank, 2).write_text("".join(parts))
        Progress({}, header_bytes=2, chunk_bytes=[len(p) for p in parts[1:]], complete=True).save(
            progress_path(shard_path(out, rank, 2)))
    merge_shards(out, 2)
    assert out.read_text() == "h\na\nb\nc\nd\ne\n"
    assert list(tmp_path.iterdir()) == [out]


def test_bad_rows_are_written_with_their_row_and_column(run, tmp_path):
    rows = table_rows(tmp_path, 6)
    rows[1]["id"] = "../up"
    rows[3]["image"] = "/etc/passwd.jpg"
    rows.insert(4, {})
    table = write_table(tmp_path / "posts.csv", rows)
    with open(table, "a") as handle:
        handle.write("r99,too,many,cells,here,and,more\n")
    result = predict_table(job(run, table, tmp_path / "out.csv", 2), shard=Shard())
    out = read_output(tmp_path / "out.csv")
    assert [row["id"] for row in out] == ["r0", "../up", "r2", "r3", "r5"]
    assert out[1]["label"] is None and out[1]["p_neutral"] is None
    assert out[1]["error"].startswith("ERROR: posts.csv:row 2 (id): empty or unsafe id '../up'")
    assert out[3]["error"].startswith("ERROR: posts.csv:row 4 (image): image path '/etc/passwd.jpg' is absolute")
    assert [row["error"] is None for row in out] == [True, False, True, False, True]
    summary = result.summary
    assert (summary.predicted, summary.errors, summary.left_out) == (3, 2, 1)
    assert summary.counts == {"error": 3, "row_dropped": 1, "image_unusable": 2}  # r2 and r5 have no image
    assert "warning: posts.csv:row 5: empty row (dropped)" in summary.listed
    assert "ERROR: posts.csv:line 9: expected 4 fields, saw 7 (unreadable row)" in summary.listed


def test_a_lab_folder_writes_the_same_columns(run_dir, dataset, tmp_path):
    assert main(["predict", "--data", str(dataset), "--run", str(run_dir), "--out", str(tmp_path / "p.csv")]) == 0
    rows = read_output(tmp_path / "p.csv")
    assert [row["id"] for row in rows] == [str(1000 + i) for i in range(24, 30)]
    assert main(["predict", "--data", str(dataset), "--run", str(run_dir), "--out", str(tmp_path / "p.txt")]) == 0
    assert [line.split(",")[1] for line in (tmp_path / "p.txt").read_text().splitlines()[1:]] == [
        row["label"] for row in rows]
