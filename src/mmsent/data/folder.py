"""The lab folder format: ``train.txt`` / ``test_without_label.txt`` of ``guid,tag`` rows, posts in ``data/``."""

from __future__ import annotations

from pathlib import Path

from .formats import DataSource, PartRead, register_format
from .posts import NULL_TAGS, SAFE_GUID, Problem, first_occurrence, folder_post

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
    return read_tag_file(root, Path(given or root / LABEL_FILES[part]), part == "train", source.fixed_labels or None)


def read_tag_file(root: Path, path: Path, labelled: bool, labels: tuple[str, ...] | None = None) -> PartRead:
    """The posts of ``root`` that a ``guid,tag`` file names, labelled by its tags (lowercased), in file order.

    ``labelled``: every row needs a tag (train) or tags are ignored (test). ``labels``: the only tags allowed
    (None = any name; the label set is then settled from all rows, :func:`~mmsent.data.formats.read_part`).
    """
    path = Path(path)
    read = PartRead([], [], root)
    if not path.is_file():
        read.problems.append(Problem(str(path), "label file not found", fatal=True))
        return read
    lines = path.read_bytes().decode("utf-8-sig", errors="replace").splitlines()
    start = _header_lines(lines, path.name, labelled, labels, read.problems)
    seen: dict[str, tuple[int, str | None]] = {}
    for number, line in enumerate(lines[start:], start=start + 1):
        where = f"{path.name}:{number}"
        row = _tag_row(line, where, labelled, labels, read.problems) if line.strip() else None
        if row is not None and first_occurrence(*row, number, seen, where, read.problems):
            read.posts.append(folder_post(root, *row, where))
    if not read.posts and not any(p.fatal for p in read.problems):
        read.problems.append(Problem(path.name, "no rows", fatal=True))
    return read


def _header_lines(lines: list[str], name: str, labelled: bool, labels, problems: list[Problem]) -> int:
    """How many lines the header takes (0 or 1); a missing or odd header is recorded in ``problems``."""
    first = lines[0].strip() if lines else ""
    fields = [f.strip().lower() for f in first.split(",")]
    known = labels if labels is not None else {line.rsplit(",", 1)[-1].strip().lower() for line in lines[1:]}
    nulls = NULL_TAGS if not labelled else ("null",)
    if first.replace(" ", "").lower() == "guid,tag":
        return 1
    if len(fields) == 2 and SAFE_GUID.match(fields[0]) and fields[1] in (*known, *nulls):
        problems.append(Problem(f"{name}:1", "header 'guid,tag' missing; first line read as data", kind="header_missing"))
        return 0
    problems.append(Problem(f"{name}:1", f"expected header 'guid,tag', found {first!r} (skipped)", kind="row_dropped"))
    return 1


def _tag_row(line: str, where: str, labelled: bool, labels, problems: list[Problem]) -> tuple[str, str | None] | None:
    """One ``guid,tag`` line -> (guid, label name or None), or None with a fatal problem."""
    parts = [p.strip() for p in line.split(",")]
    if len(parts) != 2:
        problems.append(Problem(where, f"expected 'guid,tag', found {line!r}", fatal=True))
        return None
    guid, tag = parts[0], parts[1].lower()
    if not SAFE_GUID.match(guid) or guid in (".", ".."):
        problems.append(Problem(where, f"unsafe guid {guid!r} (only letters, digits, '_', '-', '.')", fatal=True))
        return None
    if not labelled:
        if labels is not None and tag not in NULL_TAGS and tag not in labels:
            problems.append(Problem(where, f"unexpected tag {tag!r} in an unlabelled file (ignored)"))
        return guid, None
    if tag in NULL_TAGS and labels is None:
        problems.append(Problem(where, f"no label ({tag!r}) in a labelled file", fatal=True))
        return None
    if labels is not None and tag not in labels:
        problems.append(Problem(where, f"unknown tag {tag!r}; expected one of {', '.join(labels)}", fatal=True))
        return None
    return guid, tag
