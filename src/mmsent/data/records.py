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
KINDS = ("row_dropped", "header_missing", "text_missing", "text_empty", "text_truncated", "image_unusable")


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
    """One post: its guid and its label index (None for unlabelled rows)."""

    guid: str
    label: int | None


@dataclass
class LabelFile:
    path: Path
    records: list[Record] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def fatal(self) -> list[Problem]:
        return [p for p in self.problems if p.fatal]


def read_label_file(path: Path, labelled: bool) -> LabelFile:
    """Parse a ``guid,tag`` file. ``labelled``: tags must be known labels (train) or null (test)."""
    path = Path(path)
    result = LabelFile(path)
    if not path.is_file():
        result.problems.append(Problem(str(path), "label file not found", fatal=True))
        return result
    raw = path.read_bytes()
    text = raw.decode("utf-8-sig", errors="replace")
    lines = text.splitlines()
    name = path.name
    first = lines[0].strip() if lines else ""
    first_fields = [f.strip().lower() for f in first.split(",")]
    if first.replace(" ", "").lower() == "guid,tag":
        start = 1
    elif (len(first_fields) == 2 and SAFE_GUID.match(first_fields[0])
          and first_fields[1] in (*LABELS, *(NULL_TAGS if not labelled else ("null",)))):
        result.problems.append(Problem(f"{name}:1", "header 'guid,tag' missing; first line read as data",
                                       kind="header_missing"))
        start = 0
    else:
        result.problems.append(Problem(f"{name}:1", f"expected header 'guid,tag', found {first!r} (skipped)",
                                       kind="row_dropped"))
        start = 1
    seen: dict[str, tuple[int, int | None]] = {}
    for number, line in enumerate(lines[start:], start=start + 1):
        where = f"{name}:{number}"
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 2:
            result.problems.append(Problem(where, f"expected 'guid,tag', found {line!r}", fatal=True))
            continue
        guid, tag = parts
        if not SAFE_GUID.match(guid) or guid in (".", ".."):
            result.problems.append(Problem(where, f"unsafe guid {guid!r} (only letters, digits, '_', '-', '.')", fatal=True))
            continue
        tag = tag.lower()
        if labelled:
            if tag not in LABELS:
                result.problems.append(Problem(where, f"unknown tag {tag!r}; expected one of {', '.join(LABELS)}", fatal=True))
                continue
            label = LABELS.index(tag)
        else:
            if tag not in NULL_TAGS and tag not in LABELS:
                result.problems.append(Problem(where, f"unexpected tag {tag!r} in an unlabelled file (ignored)"))
            label = None
        if guid in seen:
            first_line, first_label = seen[guid]
            if first_label != label:
                result.problems.append(Problem(where, f"guid {guid} repeats line {first_line} with another tag", fatal=True))
            else:
                result.problems.append(Problem(where, f"guid {guid} repeats line {first_line} (same tag; dropped)",
                                               kind="row_dropped"))
            continue
        seen[guid] = (number, label)
        result.records.append(Record(guid, label))
    if not result.records and not result.fatal:
        result.problems.append(Problem(name, "no rows", fatal=True))
    return result


def require_usable(label_file: LabelFile) -> list[Record]:
    """Return the records, or raise DataError listing every fatal problem."""
    if label_file.fatal:
        lines = "\n  ".join(str(p) for p in label_file.fatal)
        raise DataError(f"{label_file.path} cannot be used:\n  {lines}")
    return label_file.records
