"""``mmsent convert``: write a data set of any format as a table (CSV, TSV, JSON Lines, Parquet) or a lab folder.

Row order is kept (labelled posts, then posts to predict), so the same folds come out of the converted data.
Tables hold each text inline (decoded, uncleaned) and image paths relative to the table's folder when the image
lies under it, else absolute (read back with ``--allow-outside-paths``). A lab folder gets the texts' original
bytes and copies of the images (or symbolic links with ``link_images``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..atomic import atomic_path
from ..config import DataConfig
from ..errors import ConfigError
from ..registry import TABLE_SUFFIXES
from .dataset import Split, open_data
from .folder import LABEL_FILES
from .formats import PARTS
from .text import decode_text


def read_parts(path: Path, data: DataConfig, train_file=None, test_file=None) -> list[Split]:
    """Both parts of a data set (either may be empty), raising DataError for fatal problems."""
    return [open_data(path, part, data, train_file, test_file, allow_empty=True) for part in PARTS]


def convert(path: Path, out: Path, data: DataConfig | None = None, link_images: bool = False,
            overwrite: bool = False, train_file=None, test_file=None) -> dict:
    """Write the data set at ``path`` to ``out``; returns counts (posts per part, absolute image paths)."""
    out = Path(out)
    if Path(path).resolve() == out.resolve():
        raise ConfigError(f"--out {out} is the input itself")
    if out.exists() and not overwrite and (out.is_file() or any(out.iterdir())):
        raise ConfigError(f"{out} exists; give --overwrite to replace it, or another --out")
    splits = read_parts(path, data or DataConfig(), train_file, test_file)
    write = write_table if out.suffix.lower() in TABLE_SUFFIXES else write_folder  # a table, else a lab folder
    counts = write(splits, out, link_images=link_images)
    return {**{part: len(split.records) for part, split in zip(PARTS, splits)}, **counts}


def _text_of(split: Split, guid: str) -> str:
    raw = split.read_text_bytes(guid)
    return "" if raw is None else decode_text(raw).text


def _relative_or_absolute(image: Path | None, folder: Path) -> str | None:
    if image is None:
        return None
    image = Path(os.path.normpath(image.absolute()))
    return image.relative_to(folder).as_posix() if image.is_relative_to(folder) else str(image)


def table_rows(splits: list[Split], folder: Path) -> list[dict]:
    """One dict per post with the default column names of ``DataConfig``."""
    names = DataConfig()
    return [{names.id_column: post.guid, names.label_column: post.label, names.text_column: _text_of(split, post.guid),
             names.image_column: _relative_or_absolute(post.image_path, folder)}
            for split in splits for post in split.records]


def write_table(splits: list[Split], out: Path, link_images: bool = False) -> dict:
    """A table file (its suffix registered in ``TABLE_SUFFIXES``: mmsent.data.table) with the default columns."""
    import pandas as pd

    folder = Path(os.path.normpath(out.parent.absolute()))
    frame = pd.DataFrame(table_rows(splits, folder), dtype=object)
    with atomic_path(out) as tmp:  # a killed convert leaves no half-written table
        TABLE_SUFFIXES.get(out.suffix.lower()).write(frame, tmp)
    image = DataConfig().image_column
    return {"absolute_image_paths": sum(1 for v in frame[image] if v is not None and Path(v).is_absolute())}


def write_folder(splits: list[Split], out: Path, link_images: bool = False) -> dict:
    """``OUT/train.txt``, ``OUT/test_without_label.txt`` and ``OUT/data/<guid>.txt|.jpg``."""
    (out / "data").mkdir(parents=True, exist_ok=True)
    missing_images = 0
    for part, split in zip(PARTS, splits):
        rows = [f"{post.guid},{post.label or 'null'}" for post in split.records]
        (out / LABEL_FILES[part]).write_text("\n".join(["guid,tag", *rows]) + "\n", encoding="utf-8")
        for post in split.records:
            _write_text(post, out / "data" / f"{post.guid}.txt")
            missing_images += not _place_image(post.image_path, out / "data" / f"{post.guid}.jpg", link_images)
    return {"missing_images": missing_images}


def _write_text(post, target: Path) -> None:
    if post.text_path is not None and post.text_path.is_file():
        shutil.copyfile(post.text_path, target)  # the original bytes, whatever their encoding
    elif post.text is not None:
        target.write_bytes(post.text.encode("utf-8"))


def _place_image(image: Path | None, target: Path, link: bool) -> bool:
    """Copy (or link) the image; False when there is none to place."""
    if image is None or not image.is_file():
        return False
    target.unlink(missing_ok=True)
    if link:
        target.symlink_to(image.absolute())
    else:
        shutil.copyfile(image, target)
    return True
