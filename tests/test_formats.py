"""Data formats: the lab folder, tables (CSV, TSV, JSON Lines, Parquet), MVSA releases; detection, the label set,
``mmsent convert`` round trips and every bad input named by its row and column. All data is generated here."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from helpers import needs_pyarrow
from mmsent.cli import main
from mmsent.config import LABELS, DataConfig, RunConfig, TextPrepConfig, apply_overrides, run_labels
from mmsent.data.check import check_data, format_report
from mmsent.data.convert import convert, read_parts
from mmsent.data.dataset import open_data
from mmsent.data.folder import read_tag_file
from mmsent.data.formats import FORMATS, DataSource, detect_format
from mmsent.data.mvsa import merge_pair
from mmsent.data.posts import DataError
from mmsent.data.table import frame_rows, load_frame, table_chunks
from mmsent.errors import ConfigError
from mmsent.registry import TABLE_SUFFIXES

SEVEN = ("angry", "bored", "calm", "fear", "happy", "love", "sad")


def jpeg(colour: tuple) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 16), colour).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def write_lab_folder(root: Path, train: list[tuple[str, str]], test: list[str], texts: dict | None = None,
                     skip_images: tuple = ()) -> Path:
    """A lab folder: guid,tag files, data/<guid>.txt ("post <guid>" unless ``texts``) and a JPEG per guid."""
    (root / "data").mkdir(parents=True)
    (root / "train.txt").write_text("guid,tag\n" + "".join(f"{g},{t}\n" for g, t in train))
    (root / "test_without_label.txt").write_text("guid,tag\n" + "".join(f"{g},null\n" for g in test))
    for number, guid in enumerate([g for g, _ in train] + test):
        (root / "data" / f"{guid}.txt").write_bytes((texts or {}).get(guid, f"post {guid}".encode()))
        if guid not in skip_images:
            (root / "data" / f"{guid}.jpg").write_bytes(jpeg((number * 20 % 256, 80, 160)))
    return root


def write_table(path: Path, rows: list[dict]) -> Path:
    """``rows`` as CSV, TSV, JSON Lines or Parquet, by the suffix (missing keys = empty cells)."""
    import pandas as pd

    frame = pd.DataFrame(rows, dtype=object)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    elif path.suffix in (".jsonl", ".json"):
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        frame.to_csv(path, index=False, sep="\t" if path.suffix == ".tsv" else ",")
    return path


def table_rows(folder: Path, labels: list[str | None]) -> list[dict]:
    """One row per label (None = to predict), with an image written under ``folder/images``."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for number, label in enumerate(labels):
        (folder / "images" / f"p{number}.jpg").write_bytes(jpeg((number * 30 % 256, 10, 10)))
        rows.append({"id": f"p{number}", "label": label, "text": f"Text {number} http://x.io",
                     "image": f"images/p{number}.jpg"})
    return rows


def write_mvsa(root: Path, rows: list[str], header: str) -> Path:
    """An MVSA release: labelResultAll.txt (header, then ``rows``) and data/<id>.txt|.jpg for every row."""
    (root / "data").mkdir(parents=True)
    (root / "labelResultAll.txt").write_text(header + "\n" + "\n".join(rows) + "\n")
    for row in rows:
        guid = row.split("\t")[0]
        (root / "data" / f"{guid}.txt").write_text(f"tweet {guid}")
        (root / "data" / f"{guid}.jpg").write_bytes(jpeg((5, 5, 5)))
    return root


MVSA_SINGLE = ["1\tpositive,positive", "2\tpositive,negative", "3\tneutral,negative", "4\tneutral,neutral",
               "5\tnegative,positive", "6\tpositive,neutral"]
MVSA_MULTIPLE = ["1\tpositive,positive\tpositive,neutral\tnegative,negative",  # pos, pos, neg -> positive
                 "2\tpositive,negative\tnegative,positive\tneutral,neutral",  # -, -, neu -> dropped
                 "3\tneutral,negative\tnegative,neutral\tpositive,positive",  # neg, neg, pos -> negative
                 "4\tpositive,positive\tnegative,negative\tneutral,neutral",  # pos, neg, neu -> dropped
                 "5\tneutral,neutral\tneutral,neutral\tpositive,negative"]  # neu, neu, - -> neutral


@pytest.fixture
def lab(tmp_path) -> Path:
    train = [("10", "positive"), ("11", "negative"), ("12", "neutral"), ("13", "positive"), ("14", "negative")]
    return write_lab_folder(tmp_path / "lab", train, ["20", "21"], texts={"11": b"\x93Great\x94 caf\xe9"},
                            skip_images=("13",))


def parts_content(path: Path, config: DataConfig | None = None) -> list[tuple]:
    """What must survive a conversion: per part, guids, label names, label indices, cleaned texts, image bytes."""
    content = []
    for split in read_parts(path, config or DataConfig()):
        content.append((split.guids, split.label_names, split.labels, split.texts(TextPrepConfig()),
                        [split.read_image_bytes(g) for g in split.guids]))
    return content


# ----------------------------------------------------------------------------- the lab folder


def test_folder_reads_its_label_files_in_order(lab):
    for part, name, labelled in (("train", "train.txt", True), ("test", "test_without_label.txt", False)):
        opened, rows = open_data(lab, part), read_tag_file(lab, lab / name, labelled).posts
        assert [(post.guid, post.label) for post in opened.records] == [(post.guid, post.label) for post in rows]
        assert opened.fingerprint() == open_data(lab, part).fingerprint()
    train = open_data(lab)
    assert train.label_names == LABELS and train.labels == [2, 0, 1, 2, 0]
    assert [p.where for p in train.records][:2] == ["train.txt:2", "train.txt:3"]


# ----------------------------------------------------------------------------- tables


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".json", pytest.param(".parquet", marks=needs_pyarrow)])
def test_table_formats_read_the_same_posts(tmp_path, suffix):
    rows = table_rows(tmp_path, ["positive", None, "negative", "neutral", None])
    path = write_table(tmp_path / f"posts{suffix}", rows)
    assert detect_format(DataSource(path)) == "table"
    train, test = open_data(path, "train"), open_data(path, "test")
    assert train.guids == ["p0", "p2", "p3"] and test.guids == ["p1", "p4"]
    assert train.label_names == LABELS and train.labels == [2, 0, 1] and test.labels == [None, None]
    assert train.texts(TextPrepConfig()) == ["text 0", "text 2", "text 3"]
    assert train.read_image_bytes("p2") == (tmp_path / "images" / "p2.jpg").read_bytes()
    assert train.image_where("p2") == f"posts{suffix}:row 3 (image)"


def test_table_without_id_column_numbers_rows_and_without_image_column_is_text_only(tmp_path):
    path = write_table(tmp_path / "t.csv", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"},
                                            {"text": "c", "label": "x"}])
    report = check_data(path)
    assert report.usable and report.posts == {"train": 3, "test": 0}
    assert [p.where for p in report.problems] == ["t.csv", "t.csv:row 1 (image)", "t.csv:row 2 (image)",
                                                  "t.csv:row 3 (image)"]
    assert "every post is text only" in report.problems[0].message
    split = open_data(path)
    assert split.guids == ["1", "2", "3"] and split.label_names == ("x", "y") and split.labels == [0, 1, 0]


def test_table_columns_are_named_by_options(tmp_path):
    path = write_table(tmp_path / "t.csv", [{"tweet": "hi", "sentiment": "good", "key": "a1"},
                                            {"tweet": "ho", "sentiment": "bad", "key": "a2"}])
    config = DataConfig(text_column="tweet", label_column="sentiment", id_column="key")
    split = open_data(path, data=config)
    assert split.guids == ["a1", "a2"] and split.label_names == ("bad", "good") and split.labels == [1, 0]


# ----------------------------------------------------------------------------- MVSA releases


def test_merge_pair_rules():
    assert [merge_pair("positive", "negative"), merge_pair("neutral", "negative"), merge_pair("positive", "neutral"),
            merge_pair("neutral", "neutral")] == [None, "negative", "positive", "neutral"]


def test_mvsa_single_cleaning_counts(tmp_path):
    root = write_mvsa(tmp_path / "single", MVSA_SINGLE, "ID\ttext,image")
    assert detect_format(DataSource(root)) == "mvsa-single"
    split = open_data(root)
    assert split.guids == ["1", "3", "4", "6"] and split.labels == [2, 0, 1, 2]
    report = check_data(root)
    assert [(p.where, p.kind) for p in report.problems] == [("labelResultAll.txt:3", "mvsa_opposite"),
                                                            ("labelResultAll.txt:6", "mvsa_opposite")]
    assert report.posts == {"train": 4, "test": 0}
    assert "posts dropped by cleaning rule: text and image labels of opposite polarity: 2" in format_report(report)


def test_mvsa_multiple_majority_counts(tmp_path):
    root = write_mvsa(tmp_path / "multiple", MVSA_MULTIPLE, "ID\ttext,image\ttext,image\ttext,image")
    assert detect_format(DataSource(root)) == "mvsa-multiple"
    split = open_data(root)
    assert split.guids == ["1", "3", "5"] and [split.label_names[i] for i in split.labels] == [
        "positive", "negative", "neutral"]
    report = check_data(root)
    assert [(p.where, p.kind) for p in report.problems] == [("labelResultAll.txt:3", "mvsa_no_majority"),
                                                            ("labelResultAll.txt:5", "mvsa_no_majority")]
    assert "no label given by two of the three annotators: 2" in format_report(report)


def test_mvsa_bad_line_is_fatal_and_named(tmp_path):
    root = write_mvsa(tmp_path / "single", ["1\tpositive,positive", "2\tpositive,happy", "3\tneutral"], "ID\tx")
    with pytest.raises(DataError, match=r"labelResultAll\.txt:3: labels must be.*\n.*labelResultAll\.txt:4"):
        open_data(root, data=DataConfig(format="mvsa-single"))


# ----------------------------------------------------------------------------- detection


def test_detection_and_unknown_input(tmp_path, lab):
    assert detect_format(DataSource(lab)) == "folder"
    (tmp_path / "empty").mkdir()
    (tmp_path / "sheet.xlsx").write_bytes(b"x")
    for path in (tmp_path / "empty", tmp_path / "sheet.xlsx"):
        with pytest.raises(DataError, match="cannot tell the format.*folder: .*mvsa-single: .*table: "):
            detect_format(DataSource(path))
    with pytest.raises(DataError, match="data file not found"):
        detect_format(DataSource(tmp_path / "absent.csv"))
    assert FORMATS.names() == ["folder", "mvsa-single", "mvsa-multiple", "table"]


# ----------------------------------------------------------------------------- convert


def test_convert_round_trip_folder_csv_jsonl_folder(lab, tmp_path):
    original = parts_content(lab)
    assert convert(lab, lab / "export.csv") == {"train": 5, "test": 2, "absolute_image_paths": 0}
    assert (lab / "export.csv").read_text().splitlines()[1] == "10,positive,post 10,data/10.jpg"
    convert(lab / "export.csv", lab / "export.jsonl")
    assert convert(lab / "export.jsonl", tmp_path / "again") == {"train": 5, "test": 2, "missing_images": 1}
    for path in (lab / "export.csv", lab / "export.jsonl", tmp_path / "again"):
        assert parts_content(path) == original, path
    assert (tmp_path / "again" / "train.txt").read_text() == (lab / "train.txt").read_text()


@pytest.mark.parametrize("suffix", [pytest.param(s, marks=needs_pyarrow) if s == ".parquet" else s
                                    for s in TABLE_SUFFIXES.names()])
def test_every_table_suffix_is_written_then_read_whole_and_in_chunks_alike(lab, suffix):
    out = lab / f"export{suffix.upper()}"  # suffixes are matched whatever their case
    convert(lab, out)
    assert detect_format(DataSource(out)) == "table"
    assert parts_content(out) == parts_content(lab)
    whole, problems = load_frame(out)
    assert problems == []
    chunked = [row for chunk in table_chunks(out, 2) for row in chunk.rows()]
    assert chunked == list(frame_rows(whole)) and len(chunked) == 7


@needs_pyarrow
def test_convert_outside_paths_need_the_option(lab, tmp_path):
    out = tmp_path / "elsewhere" / "posts.parquet"
    assert convert(lab, out)["absolute_image_paths"] == 7
    with pytest.raises(DataError, match=r"posts\.parquet:row 1 \(image\): image path .* refused"):
        open_data(out)
    assert parts_content(out, DataConfig(allow_outside_paths=True)) == parts_content(lab)
    with pytest.raises(ConfigError, match="exists"):
        convert(lab, out)


def test_convert_command_and_link_images(lab, tmp_path, capsys):
    assert main(["convert", "--data", str(lab), "--out", str(tmp_path / "linked"), "--link-images"]) == 0
    assert "wrote 5 labelled posts and 2 posts to predict" in capsys.readouterr().out
    assert (tmp_path / "linked" / "data" / "10.jpg").is_symlink()
    assert parts_content(tmp_path / "linked") == parts_content(lab)


# ----------------------------------------------------------------------------- bad input


def bad_table(tmp_path: Path) -> Path:
    rows = table_rows(tmp_path, ["positive", "negative", "neutral", "positive", "negative", "neutral", None])
    rows[1]["image"] = "images/absent.jpg"  # warning: missing file
    rows[2]["image"] = "../outside.jpg"  # fatal: leaves the folder
    rows[3]["image"] = str(tmp_path / "images" / "p3.jpg")  # fatal: absolute
    rows[4]["id"] = "../x"  # fatal: unsafe id
    rows[5]["id"] = "p0"  # fatal: repeats row 1 with another label
    rows.insert(6, {})  # empty row: dropped with a warning
    return write_table(tmp_path / "bad.csv", rows)


def test_every_bad_row_is_named(tmp_path):
    report = check_data(bad_table(tmp_path))
    found = [(p.where, p.fatal) for p in report.problems]
    assert found == [("bad.csv:row 3 (image)", True), ("bad.csv:row 4 (image)", True), ("bad.csv:row 5 (id)", True),
                     ("bad.csv:row 6", True), ("bad.csv:row 7", False), ("bad.csv:row 2 (image)", False)]
    assert "repeats row 1" in report.problems[3].message and "empty row" in report.problems[4].message
    assert "image file missing" in report.problems[5].message
    allowed = check_data(tmp_path / "bad.csv", data=DataConfig(allow_outside_paths=True))
    assert [p.where for p in allowed.problems if p.fatal] == ["bad.csv:row 5 (id)", "bad.csv:row 6"]


def test_unreadable_lines_and_missing_columns(tmp_path, capsys):
    csv = tmp_path / "t.csv"
    csv.write_text("id,label,text\na,x,hi\nb,y,ho,extra\nc,y,hu\n")
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('{"id": "a", "label": "x", "text": "hi"}\n{"id": "b", "label": \n[1, 2]\n')
    nothing = write_table(tmp_path / "n.csv", [{"id": "a", "label": "x"}, {"id": "b", "label": "y"}])
    assert [(p.where, p.fatal) for p in check_data(csv).problems if p.fatal] == [("t.csv:line 3", True)]
    assert [p.where for p in check_data(jsonl).problems if p.fatal] == ["t.jsonl:line 2", "t.jsonl:line 3"]
    assert [p.where for p in check_data(nothing).problems if p.fatal] == ["n.csv"]
    assert main(["check", "--data", str(nothing)]) == 1
    assert "ERROR: n.csv: no text column 'text' and no image column 'image'" in capsys.readouterr().out
    assert main(["convert", "--data", str(csv), "--out", str(tmp_path / "o.csv")]) == 2
    assert "ERROR: t.csv:line 3: expected 3 fields, saw 4 (unreadable row)" in capsys.readouterr().err


# ----------------------------------------------------------------------------- label sets


def test_fixed_labels_set_the_order_and_refuse_other_rows(tmp_path):
    path = write_table(tmp_path / "t.jsonl", table_rows(tmp_path, ["positive", "negative", "positive"]))
    split = open_data(path, data=DataConfig(labels=["Positive", "negative"]))
    assert split.label_names == ("positive", "negative") and split.labels == [0, 1, 0]
    with pytest.raises(DataError, match=r"t\.jsonl:row 2 \(label\): label 'negative' is not one of positive, neutral"):
        open_data(path, data=DataConfig(labels=["positive", "neutral"]))
    assert main(["check", "--data", str(path), "--labels", "neutral,positive"]) == 1


@pytest.mark.parametrize("names", [("no", "yes"), SEVEN])
def test_two_and_seven_classes(tmp_path, names):
    labels = [names[i % len(names)] for i in range(3 * len(names))][::-1]
    split = open_data(write_table(tmp_path / "t.csv", table_rows(tmp_path, labels)))
    assert split.label_names == tuple(sorted(names)) and len(split.records) == len(labels)
    assert [split.label_names[i] for i in split.labels] == labels
    assert split.label_counts() == {name: 3 for name in sorted(names)}


def test_one_class_and_rare_close_spellings_are_refused(tmp_path):
    one = write_lab_folder(tmp_path / "one", [("1", "happy"), ("2", "happy")], ["3"])
    with pytest.raises(DataError, match=r"train\.txt:2: only one label, 'happy'"):
        open_data(one)
    typo = write_lab_folder(tmp_path / "typo", [(str(i), "positive") for i in range(5)] + [("9", "postive"),
                                                                                             ("8", "negative")], [])
    with pytest.raises(DataError, match=r"train\.txt:7: unknown tag 'postive': a rare close spelling of 'positive'"):
        open_data(typo)
    assert open_data(typo, data=DataConfig(labels=["negative", "positive", "postive"])).labels[-2:] == [2, 0]


def test_data_config_in_the_run_config():
    assert run_labels(RunConfig.from_dict({"train": {"epochs": 3}})) == LABELS  # a run saved before DataConfig
    config = apply_overrides(RunConfig(), {"data.labels": "no,yes", "data.allow_outside_paths": "true"})
    assert config.data.labels == ["no", "yes"] and run_labels(config) == ("no", "yes")
    assert RunConfig.from_dict(config.to_dict()) == config and config.data.allow_outside_paths is True
