"""Label files (``guid,tag``) -> validated records, with every problem found named by file and line."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..config import LABELS
from ..errors import UserError

SAFE_GUID = re.compile(r"^[A-Za-z0-9_.-]+$")
NULL_TAGS = ("null", "")
# Problem kinds counted in summaries: label-file lines left out or repaired, and what happened to a post's files
# (a missing or empty text, or an unusable image, leaves the post resting on its other modality).
# MVSA releases add the posts each cleaning rule drops (mvsa.py).
KINDS = ("row_dropped", "header_missing", "text_missing", "text_empty", "text_truncated", "image_unusable",
         "mvsa_opposite", "mvsa_no_majority")


class DataError(UserError):
    """The data set cannot be used as given; the message says why."""


@dataclass
class Problem:
    """One thing wrong with the data. ``fatal`` problems stop train/predict."""

    where: str  # "train.txt:12" or "data/12.jpg"
    message: str
    fatal: bool = False
    kind: str = ""  # what was worked around, for summaries: one of KINDS, or "" (other)

    def __str__(self) -> str:
        return f"{'ERROR' if self.fatal else 'warning'}: {self.where}: {self.message}"


@dataclass
class Record:
    """One row of a label file: its guid and its label (an index into ``LABELS`` from :func:`read_label_file`, a
    name from :func:`read_tag_file`; None for unlabelled rows) and its line number."""

    guid: str
    label: int | str | None
    line: int = field(default=0, compare=False)


@dataclass
class LabelFile:
    path: Path
    records: list[Record] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def fatal(self) -> list[Problem]:
        return [p for p in self.problems if p.fatal]


def read_label_file(path: Path, labelled: bool) -> LabelFile:
    """Parse a ``guid,tag`` file whose tags are ``LABELS``; records hold label indices (the original API)."""
    parsed = read_tag_file(path, labelled, LABELS)
    parsed.records = [Record(r.guid, None if r.label is None else LABELS.index(r.label), r.line)
                      for r in parsed.records]
    return parsed


def read_tag_file(path: Path, labelled: bool, labels: tuple[str, ...] | None = None) -> LabelFile:
    """Parse a ``guid,tag`` file into records holding label names (lowercased).

    ``labelled``: every row needs a tag (train) or tags are ignored (test). ``labels``: the only tags allowed
    (None = any name; the label set is then settled by the caller from all rows).
    """
    path = Path(path)
    result = LabelFile(path)
    if not path.is_file():
        result.problems.append(Problem(str(path), "label file not found", fatal=True))
        return result
    lines = path.read_bytes().decode("utf-8-sig", errors="replace").splitlines()
    start = _header_lines(lines, path.name, labelled, labels, result.problems)
    seen: dict[str, tuple[int, str | None]] = {}
    for number, line in enumerate(lines[start:], start=start + 1):
        if line.strip():
            record = _tag_row(line, f"{path.name}:{number}", labelled, labels, result.problems)
            if record is not None and first_occurrence(record, number, seen, f"{path.name}:{number}", result.problems):
                result.records.append(record)
    if not result.records and not result.fatal:
        result.problems.append(Problem(path.name, "no rows", fatal=True))
    return result


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


def _tag_row(line: str, where: str, labelled: bool, labels, problems: list[Problem]) -> Record | None:
    """One ``guid,tag`` line -> a Record, or None with a fatal problem."""
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
        return Record(guid, None, int(where.rsplit(":", 1)[1]))
    if tag in NULL_TAGS and labels is None:
        problems.append(Problem(where, f"no label ({tag!r}) in a labelled file", fatal=True))
        return None
    if labels is not None and tag not in labels:
        problems.append(Problem(where, f"unknown tag {tag!r}; expected one of {', '.join(labels)}", fatal=True))
        return None
    return Record(guid, tag, int(where.rsplit(":", 1)[1]))


def first_occurrence(record: Record, number: int, seen: dict, where: str, problems: list[Problem],
                     unit: str = "line") -> bool:
    """False for a repeated guid (a conflicting tag is fatal, the same tag a dropped row); ``seen`` is updated."""
    if record.guid not in seen:
        seen[record.guid] = (number, record.label)
        return True
    first_line, first_label = seen[record.guid]
    if first_label != record.label:
        problems.append(Problem(where, f"guid {record.guid} repeats {unit} {first_line} with another tag", fatal=True))
    else:
        problems.append(Problem(where, f"guid {record.guid} repeats {unit} {first_line} (same tag; dropped)",
                                kind="row_dropped"))
    return False


def require_usable(label_file: LabelFile) -> list[Record]:
    """Return the records, or raise DataError listing every fatal problem."""
    if label_file.fatal:
        lines = "\n  ".join(str(p) for p in label_file.fatal)
        raise DataError(f"{label_file.path} cannot be used:\n  {lines}")
    return label_file.records
