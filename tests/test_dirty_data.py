"""A generated "dirty" data set with one example of every fault seen in the wild, run through check, train, predict.

Each fault is either fatal (the command refuses, naming the file and line), accepted as is, or repaired / worked
around (a warning, and the post rests on its other modality); the tests pin down which.
"""

from __future__ import annotations

import io
import json
import resource
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import write_dataset
from mmsent.cli import main
from mmsent.config import LABELS
from mmsent.data.dataset import Split
from mmsent.data.images import ImageError, load_square_rgb
from mmsent.data.folder import read_tag_file
from mmsent.data.text import MAX_TEXT_BYTES

FAST = ["--epochs", "1", "--folds", "2", "--batch-size", "8", "--dim", "16", "--ffn-dim", "32",
        "--set", "text.max_length=16", "--workers", "0"]
LONG_TEXT_BYTES = 5 * 1024 * 1024


# ----------------------------------------------------------------------------- faulty files


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kw)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(width: int = 40000, height: int = 40000) -> bytes:
    """A ~100-byte PNG whose header (valid CRCs) declares width x height RGB pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 256))
            + _png_chunk(b"IEND", b""))


def _truncated_jpeg() -> bytes:
    noise = np.random.default_rng(1).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    raw = _encode(Image.fromarray(noise), "JPEG", quality=90)
    return raw[: len(raw) // 2]


def _rgba_png() -> bytes:
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[:, :20] = (230, 200, 40, 255)
    return _encode(Image.fromarray(rgba, "RGBA"), "PNG")


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (40, 40), c) for c in ((120, 120, 120), (0, 0, 255), (0, 255, 0))]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def _exif_rotated_jpeg() -> bytes:
    image = Image.new("RGB", (64, 48), (30, 40, 160))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    return _encode(image, "JPEG", quality=90, exif=exif.tobytes())


def _palette_png() -> bytes:
    return _encode(Image.new("RGB", (40, 40), (230, 200, 40)).convert("P"), "PNG")


# guid -> (bytes or None for a missing file, expected outcome: None = accepted, else a word of the warning)
TEXT_FAULTS = {
    "1000": (None, "text file missing"),
    "1001": (b"", "empty text"),
    "1002": ("love great happy \u263a".encode("utf-16"), None),  # with BOM
    "1003": ("\ufeffcaf\u00e9 beautiful".encode("utf-8"), None),  # UTF-8 with BOM
    "1004": (b"\x93awful\x94 caf\xe9 sad", None),  # cp1252
    "1005": (b"sad\x00\x00 terrible\x07\x1b lost\x7f", None),  # NUL and control bytes
    "1006": (b"win " * (LONG_TEXT_BYTES // 4), "truncated"),
}
IMAGE_FAULTS = {
    "1007": (None, "image file missing"),
    "1008": (b"", "empty file"),
    "1009": (_truncated_jpeg(), "truncated"),
    "1010": (b"this is not an image, just some text\n", "not a readable image"),
    "1011": (_rgba_png(), None),  # PNG with alpha under a .jpg name
    "1012": (_animated_gif(), None),
    "1013": (_encode(Image.new("L", (48, 40), 120), "JPEG"), None),
    "1014": (_encode(Image.new("CMYK", (48, 40), (0, 0, 255, 0)), "JPEG"), None),
    "1015": (_palette_png(), None),
    "1016": (_exif_rotated_jpeg(), None),
    "1017": (_encode(Image.new("RGB", (1, 1), (30, 40, 160)), "PNG"), None),
    "1018": (_encode(Image.new("RGB", (4000, 20), (120, 120, 120)), "PNG"), "aspect ratio"),
    "1019": (png_bomb(), "refused"),
}
KEEP = "keep"
# unlabelled posts: guid -> (text, image); 1030/1031 rest on text only, 1032 on its image only, 1033 on neither
TEST_FAULTS = {"1030": (KEEP, None), "1031": (KEEP, png_bomb()), "1032": (b"", KEEP), "1033": (None, b"")}
TEST_GUIDS = [str(g) for g in range(1030, 1038)]


def write_dirty_dataset(root: Path) -> Path:
    """30 labelled and 8 unlabelled posts, every fault above, and messy but usable label files."""
    write_dataset(root, n_train=30, n_test=8)
    data = root / "data"
    for guid in [str(g) for g in range(1000, 1038)]:  # plain ASCII texts, so encoding counts are exact
        (data / f"{guid}.txt").write_text((data / f"{guid}.txt").read_bytes().decode("cp1252").encode(
            "ascii", "ignore").decode())
    for faults, suffix in ((TEXT_FAULTS, "txt"), (IMAGE_FAULTS, "jpg")):
        for guid, (raw, _) in faults.items():
            _put(data / f"{guid}.{suffix}", raw)
    for guid, files in TEST_FAULTS.items():
        for raw, suffix in zip(files, ("txt", "jpg")):
            if raw is not KEEP:
                _put(data / f"{guid}.{suffix}", raw)
    rows = (root / "train.txt").read_text().splitlines()[1:]
    # no header, CRLF endings, blank lines, stray whitespace, an identical duplicate (1003, line 8)
    messy = rows[:3] + ["", "   "] + [f"  {rows[3].replace(',', ' , ')}  "] + rows[4:6] + [rows[3]] + rows[6:]
    (root / "train.txt").write_bytes("\r\n".join(messy).encode() + b"\r\n")
    test_rows = ["guid,tag"] + [f"{g}," if g == "1031" else f"{g},null" for g in TEST_GUIDS]
    (root / "test_without_label.txt").write_bytes("\r\n".join(test_rows).encode() + b"\r\n")
    return root


def _put(path: Path, raw: bytes | None) -> None:
    path.unlink(missing_ok=True)
    if raw is not None:
        path.write_bytes(raw)


@pytest.fixture
def dirty(tmp_path) -> Path:
    return write_dirty_dataset(tmp_path / "dirty")


def _expected_warnings() -> dict[str, str]:
    """where -> a word its warning must hold, for every file fault that is not accepted silently."""
    expected = {f"data/{g}.txt": word for g, (_, word) in TEXT_FAULTS.items() if word}
    expected.update({f"data/{g}.jpg": word for g, (_, word) in IMAGE_FAULTS.items() if word})
    expected.update({"data/1030.jpg": "image file missing", "data/1031.jpg": "refused", "data/1032.txt": "empty text",
                     "data/1033.txt": "text file missing", "data/1033.jpg": "empty file"})
    return expected


# ----------------------------------------------------------------------------- the faults one by one


def test_label_file_faults_that_are_accepted(dirty):
    parsed = read_tag_file(dirty, dirty / "train.txt", labelled=True, labels=LABELS)
    assert [post.guid for post in parsed.posts] == [str(g) for g in range(1000, 1030)]  # dup dropped, order kept
    assert [(p.where, p.fatal, p.kind) for p in parsed.problems] == [
        ("train.txt:1", False, "header_missing"), ("train.txt:9", False, "row_dropped")]
    test = read_tag_file(dirty, dirty / "test_without_label.txt", labelled=False, labels=LABELS)
    assert [post.guid for post in test.posts] == TEST_GUIDS and test.problems == []


def test_unlabelled_file_without_header_keeps_a_first_row_with_empty_tag(tmp_path):
    path = tmp_path / "test.txt"
    path.write_bytes(b"1031,\r\n1032,null\r\n")
    parsed = read_tag_file(tmp_path, path, labelled=False, labels=LABELS)
    assert [post.guid for post in parsed.posts] == ["1031", "1032"]
    assert [(p.where, p.kind) for p in parsed.problems] == [("test.txt:1", "header_missing")]


@pytest.mark.parametrize("guid", sorted(g for g, (raw, _) in IMAGE_FAULTS.items() if raw is not None))
def test_each_image_fault(guid):
    raw, refused = IMAGE_FAULTS[guid]
    if refused:
        with pytest.raises(ImageError, match=refused):
            load_square_rgb(raw, 32)
    else:
        out = load_square_rgb(raw, 32)
        assert out.shape == (32, 32, 3) and out.dtype == np.uint8


def test_decompression_bomb_is_refused_without_allocating():
    raw = png_bomb(40000, 40000)  # 1.6 G pixels: 4.8 GB if decoded
    assert len(raw) < 200
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.perf_counter()
    with pytest.raises(ImageError, match="refused"):
        load_square_rgb(raw, 32)
    assert time.perf_counter() - start < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024


def test_long_text_is_truncated_and_never_fully_read(dirty):
    split = Split(dirty, read_tag_file(dirty, dirty / "train.txt", labelled=True, labels=LABELS).posts)
    assert (dirty / "data" / "1006.txt").stat().st_size == LONG_TEXT_BYTES
    assert len(split.read_text_bytes("1006")) == MAX_TEXT_BYTES + 1  # enough to know it is longer, no more


# ----------------------------------------------------------------------------- through the commands


def test_check_reports_every_fault(dirty, capsys):
    assert main(["check", "--data", str(dirty), "--all"]) == 0
    out = capsys.readouterr().out
    lines = [line.strip() for line in out.splitlines()]
    assert "data set is usable" in out
    assert "text encodings: utf-8 33, utf-16 1, utf-8-sig 1, cp1252 1" in out  # the missing one is not counted
    assert "train labels: negative 10 (33.3%), neutral 10 (33.3%), positive 10 (33.3%)" in out
    expected = _expected_warnings()
    assert f"problems: 0 fatal, {len(expected) + 2} warnings" in out
    assert "warning: train.txt:1: header 'guid,tag' missing; first line read as data" in lines
    assert "warning: train.txt:9: guid 1003 repeats line 6 (same tag; dropped)" in lines
    for where, word in expected.items():
        assert any(line.startswith(f"warning: {where}: ") and word in line for line in lines), where
    for guid in [g for g, (_, word) in {**TEXT_FAULTS, **IMAGE_FAULTS}.items() if word is None]:
        assert f"data/{guid}." not in out, guid  # accepted silently


def _tiny(bert: str, vit: str) -> list[str]:
    return ["--text-encoder", bert, "--image-encoder", vit, "--set", "image.image_size=32"]


@pytest.mark.slow
def test_train_and_predict_on_dirty_data(dirty, tmp_path, capsys, tiny_bert_dir, tiny_vit_dir):
    summary = ("data repaired or worked around: 6 text only (image unusable), 2 image only (text missing or empty), "
               "1 texts decoded with a fallback encoding (cp1252/latin-1), 1 texts truncated, 1 label rows dropped, "
               "1 label file without header; 11 warnings in all")
    for name in ("run", "again"):  # the second run reads every feature from the cache: same counts
        run = tmp_path / name
        assert main(["train", "--data", str(dirty), "--out", str(run), *FAST, *_tiny(tiny_bert_dir, tiny_vit_dir)]) == 0
        out = capsys.readouterr().out
        assert summary in out, out
        assert "11 data warnings (repaired or worked around)" in out
        data = json.loads((run / "metrics.json").read_text())["data"]
        assert data["posts"] == 30 and data["label_counts"] == {"negative": 10, "neutral": 10, "positive": 10}
        assert data["text_encodings"] == {"utf-8": 26, "utf-16": 1, "utf-8-sig": 1, "cp1252": 1}
        assert (data["images_unusable"], data["texts_unusable"], data["texts_fallback_encoding"]) == (6, 2, 1)
        assert len((run / "oof_predictions.csv").read_text().splitlines()) == 31

    predictions = tmp_path / "pred.txt"
    assert main(["predict", "--run", str(run), "--data", str(dirty), "--out", str(predictions)]) == 0
    out = capsys.readouterr().out
    rows = predictions.read_text().splitlines()
    assert rows[0] == "guid,tag" and [r.split(",")[0] for r in rows[1:]] == TEST_GUIDS  # every guid, input order
    assert all(r.split(",")[1] in ("positive", "neutral", "negative") for r in rows[1:])
    assert ("wrote 8 predictions" in out and "2 rows rested on text only, 1 rows rested on image only, "
            "1 rows rested on neither" in out)
    assert "text only (image unusable): 1030, 1031\n" in out
    assert "image only (text missing or empty): 1032\n" in out
    assert "neither (image unusable, text missing or empty): 1033\n" in out


FATAL_TRAIN = "guid,tag\n1000,positive\n1001,postive\n1002,negative\n1000,neutral\n../1003,positive\n1004,neutral\n"


def test_fatal_label_file_faults_name_their_lines(dirty, tmp_path, capsys):
    expected = ["train.txt:3: unknown tag 'postive'", "train.txt:5: guid 1000 repeats line 2 with another tag",
                "train.txt:6: unsafe guid '../1003'"]
    (dirty / "train.txt").write_text(FATAL_TRAIN)
    assert main(["check", "--data", str(dirty)]) == 1
    out = capsys.readouterr().out
    assert "problems: 3 fatal" in out and "data set CANNOT be used" in out
    for message in expected:
        assert f"ERROR: {message}" in out, message

    run = tmp_path / "run"
    assert main(["train", "--data", str(dirty), "--out", str(run), *FAST]) == 2
    err = capsys.readouterr().err
    for message in expected:
        assert message in err, message
    assert not run.exists()  # refused before anything was written

    bad_test = tmp_path / "bad_test.txt"
    bad_test.write_text("guid,tag\n1030,null\n10 31,null\n")
    assert main(["predict", "--run", str(tmp_path / "no_run"), "--data", str(dirty), "--test-file", str(bad_test),
                 "--out", str(tmp_path / "p.txt")]) == 2
    assert "bad_test.txt:3: unsafe guid '10 31'" in capsys.readouterr().err
    assert not (tmp_path / "p.txt").exists()
