"""The lab folder format: ``train.txt`` / ``test_without_label.txt`` of ``guid,tag`` rows, posts in ``data/``."""

from __future__ import annotations

from pathlib import Path

from .formats import DataSource, PartRead, register_format
from .posts import folder_post
from .records import Problem, read_tag_file

LABEL_FILES = {"train": "train.txt", "test": "test_without_label.txt"}


def _is_lab_folder(source: DataSource) -> bool:
    given = source.train_file is not None or source.test_file is not None
    return source.path.is_dir() and ((source.path / LABEL_FILES["train"]).is_file() or given)


@register_format("folder", detect=_is_lab_folder,
                 layout="a folder with train.txt and test_without_label.txt (guid,tag) and data/<guid>.txt|.jpg")
def read_folder(source: DataSource, part: str) -> PartRead:
    """One label file of the folder (``--train-file`` / ``--test-file`` or the standard names)."""
    root = source.path
    if not (root / "data").is_dir():
        problem = Problem(str(root), "no 'data' folder with the posts' <guid>.txt and <guid>.jpg files", fatal=True)
        return PartRead([], [problem], root)
    given = source.train_file if part == "train" else source.test_file
    parsed = read_tag_file(Path(given or root / LABEL_FILES[part]), part == "train", source.fixed_labels or None)
    name = parsed.path.name
    posts = [folder_post(root, r.guid, r.label, f"{name}:{r.line}") for r in parsed.records]
    return PartRead(posts, parsed.problems, root)
