"""Tests of the data layer: label files, text decoding/cleaning, images, folds, splits and ``check``.

All data is generated here in ``tmp_path``; nothing reads ../shared or the network.
"""

from __future__ import annotations

import io
import struct
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmsent.config import LABELS, DataConfig, TextPrepConfig
from mmsent.data.check import check_data
from mmsent.data.dataset import Split, open_data
from mmsent.data.folder import read_tag_file
from mmsent.data.folds import stratified_folds
from mmsent.data.images import ImageError, load_square_rgb
from mmsent.data.posts import DataError, folder_post
from mmsent.data.text import MAX_TEXT_BYTES, clean_text, decode_text

POS, NEU, NEG = LABELS.index("positive"), LABELS.index("neutral"), LABELS.index("negative")
POLARITIES = DataConfig(labels=list(LABELS))  # --labels negative,neutral,positive: no other tag is a label
SIZE = 32  # output side used for image tests


# ----------------------------------------------------------------------------- helpers


def write_labels(tmp_path: Path, content: str | bytes, name: str = "train.txt") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kw)
    return buffer.getvalue()


def solid_jpeg(colour=(200, 100, 50), size=(40, 30)) -> bytes:
    return encode(Image.new("RGB", size, colour), "JPEG", quality=95)


def close(pixel, expected, tol: int = 12) -> bool:
    return bool(np.all(np.abs(np.asarray(pixel, dtype=int) - np.asarray(expected, dtype=int)) <= tol))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def make_data_dir(root: Path, train: str, test: str = "guid,tag\nt1,null\n", texts: dict | None = None,
                  skip_images: tuple = (), images: dict | None = None) -> Path:
    """A data folder: label files, plus data/<guid>.txt ("hello <guid>") and a small JPEG for every guid."""
    (root / "data").mkdir(parents=True)
    (root / "train.txt").write_text(train)
    (root / "test_without_label.txt").write_text(test)
    guids = [line.split(",")[0] for text in (train, test) for line in text.splitlines()[1:] if line.strip()]
    texts, images = texts or {}, images or {}
    for guid in guids:
        raw = texts.get(guid, f"hello {guid}".encode())
        if raw is not None:
            (root / "data" / f"{guid}.txt").write_bytes(raw)
        if guid not in skip_images:
            (root / "data" / f"{guid}.jpg").write_bytes(images.get(guid, solid_jpeg()))
    return root


def read_labels(path: Path, labelled: bool):
    """The lab folder's reading of one label file, with the three polarities as the only tags (``--labels``)."""
    return read_tag_file(path.parent, path, labelled, LABELS)


def rows(read) -> list[tuple]:
    return [(post.guid, post.label) for post in read.posts]


def open_labels(path: Path):
    """The posts of a label file through ``open_data`` (a ``data`` folder beside it), the polarities as labels."""
    (path.parent / "data").mkdir(exist_ok=True)
    return open_data(path.parent, train_file=path, data=POLARITIES)


# ----------------------------------------------------------------------------- label files (guid,tag)


def test_read_good_label_file(tmp_path):
    parsed = read_labels(write_labels(tmp_path, "guid,tag\n1,positive\n2,neutral\n3,negative\n"), labelled=True)
    assert rows(parsed) == [("1", "positive"), ("2", "neutral"), ("3", "negative")]
    assert parsed.problems == []
    assert open_labels(tmp_path / "train.txt").guids == ["1", "2", "3"]


def test_read_tolerates_crlf_blank_lines_whitespace_bom_and_case(tmp_path):
    content = b"\xef\xbb\xbfguid,tag\r\n 1 , positive \r\n\r\n\r\n2,Negative\r\n   \r\n"
    parsed = read_labels(write_labels(tmp_path, content), labelled=True)
    assert rows(parsed) == [("1", "positive"), ("2", "negative")]
    assert parsed.problems == []


def test_unknown_tag_is_fatal_and_names_file_and_line(tmp_path):
    parsed = read_labels(write_labels(tmp_path, "guid,tag\n1,positive\n2,postive\n"), labelled=True)
    assert [(p.where, p.fatal) for p in parsed.problems] == [("train.txt:3", True)]
    assert "postive" in parsed.problems[0].message
    assert rows(parsed) == [("1", "positive")]


def test_conflicting_duplicate_guid_is_fatal(tmp_path):
    parsed = read_labels(write_labels(tmp_path, "guid,tag\n7,positive\n7,negative\n"), labelled=True)
    assert [(p.where, p.fatal) for p in parsed.problems] == [("train.txt:3", True)]
    assert "repeats line 2" in parsed.problems[0].message


def test_identical_duplicate_is_a_warning_and_kept_once(tmp_path):
    parsed = read_labels(write_labels(tmp_path, "guid,tag\n7,positive\n8,neutral\n7,positive\n"), labelled=True)
    assert rows(parsed) == [("7", "positive"), ("8", "neutral")]
    assert [(p.where, p.fatal) for p in parsed.problems] == [("train.txt:4", False)]


@pytest.mark.parametrize("guid", ["../x", "a/b", "a\\b", "a b", "..", ".", "a\x01b", "a\x7fb", "é1"])
def test_unsafe_guid_is_fatal(tmp_path, guid):
    parsed = read_labels(write_labels(tmp_path, f"guid,tag\nok,positive\n{guid},positive\n"), labelled=True)
    assert [(p.where, p.fatal) for p in parsed.problems] == [("train.txt:3", True)]
    assert rows(parsed) == [("ok", "positive")]


def test_missing_header_warns_and_keeps_first_row(tmp_path):
    parsed = read_labels(write_labels(tmp_path, "1,positive\n2,negative\n"), labelled=True)
    assert rows(parsed) == [("1", "positive"), ("2", "negative")]
    assert [(p.where, p.fatal) for p in parsed.problems] == [("train.txt:1", False)]
    assert "missing" in parsed.problems[0].message


@pytest.mark.parametrize("header", ["guid,label", "guid;tag", "GUID\ttag", "id,label"])
def test_wrong_header_is_warned_and_skipped(tmp_path, header):
    parsed = read_labels(write_labels(tmp_path, f"{header}\n1,positive\n"), labelled=True)
    assert rows(parsed) == [("1", "positive")]
    assert [(p.where, p.fatal) for p in parsed.problems] == [("train.txt:1", False)]
    assert "expected header" in parsed.problems[0].message


def test_header_case_and_spaces_accepted_silently(tmp_path):
    parsed = read_labels(write_labels(tmp_path, "GUID , Tag\n1,neutral\n"), labelled=True)
    assert rows(parsed) == [("1", "neutral")] and parsed.problems == []


def test_unlabelled_file_accepts_empty_and_null_tags(tmp_path):
    path = write_labels(tmp_path, "guid,tag\n1,\n2,null\n3,NULL\n", name="test_without_label.txt")
    parsed = read_labels(path, labelled=False)
    assert rows(parsed) == [("1", None), ("2", None), ("3", None)]
    assert parsed.problems == []


def test_unlabelled_file_with_real_tag_is_only_a_warning(tmp_path):
    parsed = read_labels(write_labels(tmp_path, "guid,tag\n1,happy\n", name="t.txt"), labelled=False)
    assert rows(parsed) == [("1", None)]
    assert [(p.where, p.fatal) for p in parsed.problems] == [("t.txt:2", False)]


def test_empty_tag_is_fatal_in_a_labelled_file(tmp_path):
    parsed = read_labels(write_labels(tmp_path, "guid,tag\n1,\n2,null\n"), labelled=True)
    assert [(p.where, p.fatal) for p in parsed.problems] == [("train.txt:2", True), ("train.txt:3", True)]


def test_open_data_lists_every_fatal_line(tmp_path):
    content = "guid,tag\n1,positive\n2,postive\n3,negative\n../4,neutral\n5,a,b\n1,negative\n"
    with pytest.raises(DataError) as info:
        open_labels(write_labels(tmp_path, content))
    message = str(info.value)
    for line in (3, 5, 6, 7):
        assert f"train.txt:{line}" in message
    assert "train.txt:2" not in message and "train.txt:4" not in message
    assert message.count("ERROR") == 4


def test_header_only_file_is_fatal(tmp_path):
    parsed = read_labels(write_labels(tmp_path, "guid,tag\n"), labelled=True)
    assert rows(parsed) == [] and [p.fatal for p in parsed.problems] == [True]


def test_missing_label_file_is_fatal(tmp_path):
    parsed = read_labels(tmp_path / "nope.txt", labelled=True)
    assert rows(parsed) == []
    assert [(p.fatal, p.message) for p in parsed.problems] == [(True, "label file not found")]
    with pytest.raises(DataError, match="label file not found"):
        open_labels(tmp_path / "nope.txt")


# ----------------------------------------------------------------------------- decode_text


@pytest.mark.parametrize("raw, text, encoding", [
    (b"hello world", "hello world", "utf-8"),
    ("café ☺".encode("utf-8"), "café ☺", "utf-8"),
    (b"\xef\xbb\xbfhi there", "hi there", "utf-8-sig"),
    (b"\xff\xfe" + "héllo".encode("utf-16-le"), "héllo", "utf-16"),
    (b"\xfe\xff" + "héllo".encode("utf-16-be"), "héllo", "utf-16"),
    (b"\x93hi\x94", "\u201chi\u201d", "cp1252"),
    (b"caf\xe9 \x80", "café €", "cp1252"),
    (b"\x81\x8d", "\x81\x8d", "latin-1"),  # undefined in cp1252
    (b"", "", "utf-8"),
])
def test_decode_text(raw, text, encoding):
    decoded = decode_text(raw)
    assert (decoded.text, decoded.encoding, decoded.truncated) == (text, encoding, False)


def test_decode_text_truncates_large_files():
    decoded = decode_text(b"a" * (MAX_TEXT_BYTES + 10))
    assert decoded.truncated and decoded.text == "a" * MAX_TEXT_BYTES and decoded.encoding == "utf-8"
    assert not decode_text(b"a" * MAX_TEXT_BYTES).truncated


def test_decode_text_truncation_inside_a_multibyte_character_stays_utf8():
    raw = "€".encode() * (MAX_TEXT_BYTES // 3 + 100)  # 3-byte chars; the cut falls inside one
    decoded = decode_text(raw)
    assert decoded.truncated and decoded.encoding == "utf-8"
    assert decoded.text == "€" * (MAX_TEXT_BYTES // 3)


# ----------------------------------------------------------------------------- clean_text


def test_clean_text_defaults_strip_urls_mentions_rt_and_lowercase():
    raw = "RT @bob_1: Check THIS https://t.co/x?y=1 and www.example.com NOW"
    assert clean_text(raw, TextPrepConfig()) == "check this and now"


@pytest.mark.parametrize("raw", ["a\x00b\x07c\x1bd\x7fe", "a\x00\x00b c\td\ne"])
def test_clean_text_always_removes_control_bytes(raw):
    off = TextPrepConfig(strip_urls=False, strip_mentions=False, strip_rt=False, lowercase=False)
    assert clean_text(raw, off).split() == list("abcde")
    assert not any(ord(c) < 32 or ord(c) == 127 for c in clean_text(raw, off).replace(" ", ""))


def test_clean_text_placeholders_and_hashtag_splitting():
    raw = "RT @bob_1: #WeDemandSafety4All at #UAlberta #legday https://t.co/x"
    assert clean_text(raw, TextPrepConfig(placeholders=True)) == "user #wedemandsafety4all at #ualberta #legday url"
    assert clean_text(raw, TextPrepConfig(split_hashtags=True)) == "we demand safety 4 all at u alberta legday"
    keep_case = TextPrepConfig(split_hashtags=True, lowercase=False, strip_mentions=False)
    assert clean_text("@Ann #iPhone6 #NYC rocks", keep_case) == "@Ann i Phone 6 NYC rocks"


def test_clean_text_stopwords_keep_negation():
    prep = TextPrepConfig(remove_stopwords=True)
    assert clean_text("This is NOT a good day", prep) == "not good day"
    assert clean_text("This is NOT a good day", TextPrepConfig()) == "this is not a good day"


def test_clean_text_max_chars():
    assert clean_text("abcdefghij", TextPrepConfig(max_chars=5)) == "abcde"
    assert clean_text("abcdefghij", TextPrepConfig(max_chars=100)) == "abcdefghij"


@pytest.mark.parametrize("option, raw, when_on, when_off", [
    ("strip_urls", "see http://t.co/x", "see", "see http://t.co/x"),
    ("strip_mentions", "hi @bob", "hi", "hi @bob"),
    ("strip_rt", "RT hi", "hi", "RT hi"),
    ("lowercase", "Hi There", "hi there", "Hi There"),
])
def test_clean_text_each_option_can_be_switched_off(option, raw, when_on, when_off):
    base = {"lowercase": False} if option != "lowercase" else {}
    assert clean_text(raw, TextPrepConfig(**base, **{option: True})) == when_on
    assert clean_text(raw, TextPrepConfig(**base, **{option: False})) == when_off


# ----------------------------------------------------------------------------- images


def test_normal_jpeg():
    out = load_square_rgb(solid_jpeg((200, 100, 50), (64, 48)), SIZE)
    assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.uint8
    assert close(out[SIZE // 2, SIZE // 2], (200, 100, 50))


def test_png_with_alpha_under_jpg_name_is_composited_on_white(tmp_path):
    rgba = np.zeros((SIZE, SIZE, 4), np.uint8)
    rgba[:, : SIZE // 2] = (255, 0, 0, 255)  # opaque red left
    rgba[:, SIZE // 2:] = (0, 255, 0, 0)  # fully transparent right
    path = tmp_path / "post.jpg"
    Image.fromarray(rgba, "RGBA").save(path, "PNG")
    out = load_square_rgb(path.read_bytes(), SIZE)
    assert out.shape == (SIZE, SIZE, 3)
    assert close(out[SIZE // 2, 2], (255, 0, 0)) and close(out[SIZE // 2, SIZE - 3], (255, 255, 255))


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    raw = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(raw)).n_frames == 3
    out = load_square_rgb(raw, SIZE)
    assert out.shape == (SIZE, SIZE, 3) and close(out[SIZE // 2, SIZE // 2], (255, 0, 0))


@pytest.mark.parametrize("mode, fmt, colour, expected", [
    ("L", "JPEG", 128, (128, 128, 128)),
    ("L", "PNG", 77, (77, 77, 77)),
    ("CMYK", "JPEG", (0, 255, 255, 0), (255, 0, 0)),
    ("RGB", "PNG", (10, 200, 30), (10, 200, 30)),
])
def test_other_modes(mode, fmt, colour, expected):
    out = load_square_rgb(encode(Image.new(mode, (48, 40), colour), fmt), SIZE)
    assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.uint8
    assert close(out[SIZE // 2, SIZE // 2], expected, tol=16)


def test_palette_image():
    image = Image.new("RGB", (40, 40), (0, 128, 255)).convert("P")
    assert image.mode == "P"
    out = load_square_rgb(encode(image, "PNG"), SIZE)
    assert out.shape == (SIZE, SIZE, 3) and close(out[SIZE // 2, SIZE // 2], (0, 128, 255), tol=20)


def test_palette_transparency_becomes_white():
    image = Image.new("P", (40, 40), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    out = load_square_rgb(encode(image, "GIF", transparency=1), SIZE)
    assert close(out[SIZE // 2, SIZE // 2], (255, 255, 255))


@pytest.mark.parametrize("orientation, top, bottom, left, right", [
    (None, "mix", "mix", "red", "blue"),  # no EXIF: left red / right blue as stored
    (6, "red", "blue", "mix", "mix"),  # rotate 90° clockwise: stored left side ends on top
    (8, "blue", "red", "mix", "mix"),  # rotate 90° counter-clockwise: stored left side ends at the bottom
])
def test_exif_orientation_is_applied(orientation, top, bottom, left, right):
    pixels = np.zeros((100, 200, 3), np.uint8)
    pixels[:, :100], pixels[:, 100:] = (255, 0, 0), (0, 0, 255)
    image = Image.fromarray(pixels)
    kw = {}
    if orientation is not None:
        exif = image.getexif()
        exif[0x0112] = orientation
        kw["exif"] = exif.tobytes()
    out = load_square_rgb(encode(image, "JPEG", quality=95, **kw), SIZE)
    assert out.shape == (SIZE, SIZE, 3)
    colours = {"red": (255, 0, 0), "blue": (0, 0, 255)}
    mid, edge = SIZE // 2, 2
    for where, pixel in (("top", out[edge, mid]), ("bottom", out[-edge - 1, mid]),
                         ("left", out[mid, edge]), ("right", out[mid, -edge - 1])):
        expected = {"top": top, "bottom": bottom, "left": left, "right": right}[where]
        if expected != "mix":
            assert close(pixel, colours[expected], tol=20), (where, pixel)


def test_one_pixel_image():
    out = load_square_rgb(encode(Image.new("RGB", (1, 1), (9, 99, 199)), "PNG"), SIZE)
    assert out.shape == (SIZE, SIZE, 3) and close(out[0, 0], (9, 99, 199), tol=1)
    assert close(out[-1, -1], (9, 99, 199), tol=1)


@pytest.mark.parametrize("size", [(2000, 10), (10, 2000)])
def test_extremely_elongated_image_is_refused(size):
    with pytest.raises(ImageError, match="aspect"):
        load_square_rgb(encode(Image.new("RGB", size, (1, 2, 3)), "PNG"), SIZE)


@pytest.mark.parametrize("raw", [b"", b"not an image at all", np.random.default_rng(0).bytes(4096),
                                 b"\xff\xd8\xff\xe0" + b"\x00" * 50])
def test_unreadable_bytes_raise_image_error(raw):
    with pytest.raises(ImageError):
        load_square_rgb(raw, SIZE)


def test_truncated_jpeg_raises_only_image_error():
    """Pillow (with LOAD_TRUNCATED_IMAGES off, as here) refuses a JPEG cut in half: ImageError.

    Should a Pillow version decode it partially instead, a correctly shaped array is also acceptable.
    """
    noise = np.random.default_rng(1).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    raw = encode(Image.fromarray(noise), "JPEG", quality=90)
    try:
        out = load_square_rgb(raw[: len(raw) // 2], SIZE)
    except ImageError as error:
        assert "truncated" in str(error) or "decode" in str(error)
    else:
        assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.uint8


def test_decompression_bomb_is_refused_quickly():
    """A ~100-byte PNG whose IHDR declares 30000x30000 pixels must be refused before decoding."""
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)  # 8-bit RGB
    raw = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
           + png_chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + png_chunk(b"IEND", b""))
    assert len(raw) < 200
    start = time.perf_counter()
    with pytest.raises(ImageError, match="refused"):  # refused from the header, not a decode failure
        load_square_rgb(raw, SIZE)
    assert time.perf_counter() - start < 1.0


def test_moderate_bomb_under_pillow_limit_is_refused_by_own_limit():
    """7000x7000 = 49M pixels: below Pillow's own error threshold, above MAX_IMAGE_PIXELS (40M)."""
    ihdr = struct.pack(">IIBBBBB", 7000, 7000, 8, 0, 0, 0, 0)
    raw = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
           + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + png_chunk(b"IEND", b""))
    with pytest.raises(ImageError, match="7000x7000"):
        load_square_rgb(raw, SIZE)


# ----------------------------------------------------------------------------- folds

FOLD_LABELS = [0] * 11 + [1] * 7 + [2] * 5


@pytest.mark.parametrize("k", [2, 3, 5])
def test_folds_partition_and_stratify(k):
    folds = stratified_folds(FOLD_LABELS, k, seed=0)
    assert len(folds) == k
    n = len(FOLD_LABELS)
    vals = [set(val.tolist()) for _, val in folds]
    assert set().union(*vals) == set(range(n))
    assert sum(len(v) for v in vals) == n  # disjoint
    labels = np.asarray(FOLD_LABELS)
    for train, val in folds:
        assert sorted(train.tolist() + val.tolist()) == list(range(n))
    for cls in range(3):
        per_fold = [int((labels[val] == cls).sum()) for _, val in folds]
        assert max(per_fold) - min(per_fold) <= 1, (cls, per_fold)
    sizes = [len(v) for v in vals]
    assert max(sizes) - min(sizes) <= 1


def test_folds_reproducible_by_seed():
    as_lists = lambda folds: [val.tolist() for _, val in folds]  # noqa: E731
    assert as_lists(stratified_folds(FOLD_LABELS, 5, seed=3)) == as_lists(stratified_folds(FOLD_LABELS, 5, seed=3))
    assert as_lists(stratified_folds(FOLD_LABELS, 5, seed=3)) != as_lists(stratified_folds(FOLD_LABELS, 5, seed=4))


def test_folds_are_scikit_learns_shuffled_stratified_k_fold():
    from sklearn.model_selection import StratifiedKFold

    expected = StratifiedKFold(n_splits=3, shuffle=True, random_state=5).split(np.zeros(len(FOLD_LABELS)), FOLD_LABELS)
    assert [(t.tolist(), v.tolist()) for t, v in stratified_folds(FOLD_LABELS, 3, seed=5)] == [
        (t.tolist(), v.tolist()) for t, v in expected]


@pytest.mark.parametrize("labels, k, message", [
    ([0] * 10 + [1] * 4, 5, r"at least 5 examples .*counts: \[10, 4\]"), ([0, 1, 0, 1], 3, "at least 3 examples"),
    ([0] * 10, 1, "at least 2"), ([], 2, "no labelled posts"),
])
def test_folds_refuse_too_few_examples(labels, k, message):
    from mmsent.errors import UserError

    with pytest.raises(UserError, match=message):  # the user's to fix: one line from the CLI, not a traceback
        stratified_folds(labels, k, seed=0)


# ----------------------------------------------------------------------------- open_data / Split


def test_open_data_missing_folder(tmp_path):
    with pytest.raises(DataError, match="not found"):
        open_data(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="'data' folder"):
        open_data(tmp_path / "empty", train_file=tmp_path / "empty" / "train.txt")


def test_open_data_with_fatal_label_file_raises(tmp_path, monkeypatch):
    root = make_data_dir(tmp_path / "d", "guid,tag\n1,positive\n2,postive\n")
    with pytest.raises(DataError, match=r"train\.txt:3"):
        open_data(root, data=POLARITIES)


def test_split_texts_missing_file_and_encodings(tmp_path, monkeypatch):
    root = make_data_dir(tmp_path / "d", "guid,tag\n1,positive\n2,negative\n3,neutral\n4,positive\n",
                         texts={"1": b"\x93Great\x94 day", "2": None, "3": "Café".encode(), "4": b"ok"})
    split = open_data(root)
    assert split.guids == ["1", "2", "3", "4"] and split.labels == [POS, NEG, NEU, POS]
    texts = split.texts(TextPrepConfig())
    assert texts == ["\u201cgreat\u201d day", "", "café", "ok"]
    assert split.encodings == Counter({"utf-8": 2, "cp1252": 1})
    missing = [p for p in split.problems if p.where == "data/2.txt"]
    assert len(missing) == 1 and not missing[0].fatal and "missing" in missing[0].message
    split.texts(TextPrepConfig())  # a second pass neither duplicates warnings nor double-counts
    assert len([p for p in split.problems if p.where == "data/2.txt"]) == 1
    assert split.encodings == Counter({"utf-8": 2, "cp1252": 1})
    assert split.label_counts() == {"negative": 1, "neutral": 1, "positive": 2}


def test_split_texts_flags_truncation_and_empty(tmp_path):
    root = make_data_dir(tmp_path / "d", "guid,tag\n1,positive\n2,negative\n",
                         texts={"1": b"x" * (MAX_TEXT_BYTES + 5), "2": b"  \n"})
    split = Split(root, read_labels(root / "train.txt", True).posts)
    texts = split.texts(TextPrepConfig(max_chars=10 ** 6))
    assert texts == ["x" * MAX_TEXT_BYTES, ""]
    assert [(p.where, p.fatal) for p in split.problems] == [("data/1.txt", False), ("data/2.txt", False)]
    assert "truncated" in split.problems[0].message and "empty" in split.problems[1].message


def test_fingerprint_tracks_image_bytes(tmp_path):
    root = make_data_dir(tmp_path / "d", "guid,tag\n1,positive\n2,negative\n")
    split = open_data(root)
    first = split.fingerprint()
    assert split.fingerprint() == first
    assert open_data(root).fingerprint() == first
    image = root / "data" / "2.jpg"
    original = image.read_bytes()
    changed = bytearray(original)
    changed[len(changed) // 2] ^= 0x01
    image.write_bytes(bytes(changed))
    assert split.fingerprint() != first
    image.write_bytes(original)
    assert split.fingerprint() == first
    image.unlink()  # a missing image also changes it
    assert split.fingerprint() != first


def test_fingerprint_tracks_text_and_label(tmp_path):
    root = make_data_dir(tmp_path / "d", "guid,tag\n1,positive\n2,negative\n")
    split = open_data(root)
    first = split.fingerprint()
    relabelled = Split(root, [folder_post(root, "1", "positive", "train.txt:2"),
                              folder_post(root, "2", "neutral", "train.txt:3")], label_names=LABELS)
    assert relabelled.fingerprint() != first
    (root / "data" / "1.txt").write_bytes(b"hello 1!")
    assert split.fingerprint() != first


# ----------------------------------------------------------------------------- check_data


def test_check_clean_folder(tmp_path):
    root = make_data_dir(tmp_path / "d", "guid,tag\n1,positive\n2,negative\n3,neutral\n4,positive\n",
                         texts={"3": b"\x93quoted\x94"})
    report = check_data(root, root / "train.txt", root / "test_without_label.txt", log=lambda *a: None)
    assert report.usable
    assert report.problems == []
    assert report.label_counts == {"train": {"negative": 1, "neutral": 1, "positive": 2}}
    assert report.posts == {"train": 4, "test": 1}
    assert report.encodings == Counter({"utf-8": 4, "cp1252": 1})


def test_check_unknown_tag_is_unusable(tmp_path):
    root = make_data_dir(tmp_path / "d", "guid,tag\n1,positive\n2,postive\n")
    report = check_data(root, root / "train.txt", root / "test_without_label.txt", log=lambda *a: None)
    assert not report.usable
    assert [(p.where, p.fatal) for p in report.problems if p.fatal] == [("train.txt:3", True)]


def test_check_missing_or_broken_image_is_a_warning(tmp_path):
    root = make_data_dir(tmp_path / "d", "guid,tag\n1,positive\n2,negative\n3,neutral\n",
                         skip_images=("2",), images={"3": b"garbage"})
    report = check_data(root, root / "train.txt", root / "test_without_label.txt", log=lambda *a: None)
    assert report.usable
    assert sorted((p.where, p.fatal) for p in report.problems) == [("data/2.jpg", False), ("data/3.jpg", False)]
    assert "missing" in next(p for p in report.problems if p.where == "data/2.jpg").message


def test_check_missing_test_file_or_data_folder_is_fatal(tmp_path):
    root = make_data_dir(tmp_path / "d", "guid,tag\n1,positive\n")
    (root / "test_without_label.txt").unlink()
    report = check_data(root, root / "train.txt", root / "test_without_label.txt", log=lambda *a: None)
    assert not report.usable and report.posts == {"train": 1, "test": 0}
    (tmp_path / "bare").mkdir()
    assert not check_data(tmp_path / "bare", tmp_path / "bare" / "train.txt", tmp_path / "bare" / "test_without_label.txt").usable
    with pytest.raises(DataError):
        check_data(tmp_path / "absent", tmp_path / "absent" / "train.txt", tmp_path / "absent" / "test_without_label.txt")
