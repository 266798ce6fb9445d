"""JSON Lines predicted in chunks: every chunk has the table's columns, as the whole-table read has (a first chunk of
unreadable lines only, a chunk whose rows all lack a key). A stub predictor stands for a run: the rows and posts a
chunked read gives are what is checked, not a model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mmsent.data.dataset import open_data
from mmsent.data.formats import DataSource
from mmsent.distributed import Shard
from mmsent.predict_table import TableJob, predict_table


class StubRun:
    """Predicts uniform probabilities and records the posts it was given."""

    classes = ("negative", "positive")
    run_dir = None
    decision_offsets = None  # the most probable class

    def __init__(self):
        self.posts = []

    def predict_split(self, split, log=print, cache: bool = True) -> np.ndarray:
        self.posts += split.records
        return np.full((len(split.records), 2), 0.5)


def _predict(table: Path, out: Path, chunk_size: int = 2):
    run = StubRun()
    result = predict_table(TableJob(run, DataSource(table), out, chunk_size), shard=Shard())
    return run, result, [json.loads(line) for line in out.read_text().splitlines()]


def test_a_first_chunk_of_unreadable_lines_still_predicts_the_rest(tmp_path):
    table = tmp_path / "posts.jsonl"
    rows = [json.dumps({"id": f"r{i}", "text": f"post {i}"}) for i in range(3)]
    table.write_text("{broken\n[1, 2]\n" + "\n".join(rows) + "\n")
    run, result, out = _predict(table, tmp_path / "out.jsonl")
    assert [row["id"] for row in out] == ["r0", "r1", "r2"] and all(row["error"] is None for row in out)
    assert [post.text for post in run.posts] == ["post 0", "post 1", "post 2"]
    assert result.summary.predicted == 3 and result.summary.counts.get("error") == 2
    listed = "\n".join(result.summary.listed)
    assert "posts.jsonl:line 1: unreadable row" in listed and "posts.jsonl:line 2: unreadable row" in listed


def test_a_chunk_whose_rows_lack_a_key_reads_them_as_the_whole_table_does(tmp_path):
    table = tmp_path / "posts.jsonl"
    rows = [{"id": "a", "image": "a.jpg"}, {"id": "b", "image": "b.jpg"}, {"id": "c", "text": "words"}]
    table.write_text("".join(json.dumps(row) + "\n" for row in rows))
    whole = open_data(table, "test", allow_empty=True).records
    run, _, _ = _predict(table, tmp_path / "out.jsonl")
    assert [(p.guid, p.text, p.image_path) for p in run.posts] == [(p.guid, p.text, p.image_path) for p in whole]
    assert [p.text for p in run.posts] == ["", "", "words"]  # the table has a text column: a missing key is empty


def test_an_upper_case_suffix_writes_the_same_format(tmp_path):
    table = tmp_path / "posts.jsonl"
    table.write_text(json.dumps({"id": "a", "text": "words"}) + "\n")
    run = StubRun()
    predict_table(TableJob(run, DataSource(table), tmp_path / "OUT.CSV"), shard=Shard())
    predict_table(TableJob(run, DataSource(table), tmp_path / "OUT.JSONL"), shard=Shard())
    assert (tmp_path / "OUT.CSV").read_text().splitlines() == ["id,label,p_negative,p_positive,error",
                                                                "a,negative,0.5,0.5,"]
    assert json.loads((tmp_path / "OUT.JSONL").read_text())["id"] == "a"
