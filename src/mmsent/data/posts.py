"""The general post record every format reads into, the problems found reading posts (named by file and row), and
the label set settled from the labelled posts."""

from __future__ import annotations

import difflib
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

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


TYPO_SIMILARITY = 0.8  # difflib ratio from which two label names count as spellings of one word
TYPO_MAX_SHARE = 0.01  # a label so spelled is a typo when it holds at most this share of the rows (or 2 rows)


@dataclass
class Post:
    """One post of any format: id, label name (None = to predict), text (inline, or a file) and image (a file, or
    its bytes for a post given in memory).

    The ``*_where`` strings name where each part came from in problems: ``train.txt:12`` and ``data/12.jpg`` for
    the lab folder, ``posts.csv:row 12 (image)`` for a table.
    """

    guid: str
    label: str | None
    where: str
    text: str | None = None
    text_path: Path | None = None
    image_path: Path | None = None
    text_where: str = ""
    image_where: str = ""
    label_where: str = ""
    image: bytes | None = None  # the image's encoded bytes, for a post given in memory (else ``image_path``)

    @property
    def has_text_source(self) -> bool:
        return self.text is not None or self.text_path is not None


def folder_post(root: Path, guid: str, label: str | None, where: str) -> Post:
    """A post whose text and image are ``root/data/<guid>.txt`` and ``.jpg`` (the lab folder and MVSA releases)."""
    return Post(guid, label, where, text_path=root / "data" / f"{guid}.txt", image_path=root / "data" / f"{guid}.jpg",
                text_where=f"data/{guid}.txt", image_where=f"data/{guid}.jpg", label_where=where)


def first_occurrence(guid: str, label, number: int, seen: dict, where: str, problems: list[Problem],
                     unit: str = "line") -> bool:
    """False for a repeated guid (a conflicting label is fatal, the same label a dropped row); ``seen`` (guid ->
    (number, label) of its first occurrence) is updated."""
    if guid not in seen:
        seen[guid] = (number, label)
        return True
    first_line, first_label = seen[guid]
    if first_label != label:
        problems.append(Problem(where, f"guid {guid} repeats {unit} {first_line} with another tag", fatal=True))
    else:
        problems.append(Problem(where, f"guid {guid} repeats {unit} {first_line} (same tag; dropped)",
                                kind="row_dropped"))
    return False


def normalise_label(name: str) -> str:
    """Label names are compared stripped and lowercased in every format."""
    return name.strip().lower()


def settle_labels(posts: list[Post], fixed: tuple[str, ...] = ()) -> tuple[tuple[str, ...], list[Problem]]:
    """The label set of ``posts`` and the fatal problems of their labels.

    ``fixed`` (``--labels``): the set in that order; a post with another label is refused. Otherwise the sorted
    names found, refusing a single class and a rare close spelling of another label (a likely typo).
    """
    if fixed:
        return fixed, [Problem(p.label_where or p.where, f"label {p.label!r} is not one of {', '.join(fixed)} "
                               "(--labels)", fatal=True) for p in posts if p.label is not None and p.label not in fixed]
    counts = Counter(p.label for p in posts if p.label is not None)
    names = tuple(sorted(counts))
    first_post = {}
    for post in posts:
        first_post.setdefault(post.label, post)
    if len(names) == 1:
        post = first_post[names[0]]
        return names, [Problem(post.label_where or post.where, f"only one label, {names[0]!r}, in the labelled "
                               "rows: at least two classes are needed", fatal=True)]
    typos = _likely_typos(counts, list(first_post))
    return names, [Problem(p.label_where or p.where, f"unknown tag {p.label!r}: a rare close spelling of "
                           f"{typos[p.label]!r}; correct it, or list every label with --labels", fatal=True)
                   for p in posts if p.label in typos]


def _likely_typos(counts: Counter, order: list) -> dict[str, str]:
    """{rare label: the common label it looks like a misspelling of}; ties in count blame the later label."""
    rare = max(2, int(TYPO_MAX_SHARE * sum(counts.values())))
    rank = {name: (counts[name], -order.index(name)) for name in counts}
    typos = {}
    for name in counts:
        for other in counts:
            if (other != name and rank[name] < rank[other] and counts[name] <= rare
                    and difflib.SequenceMatcher(None, name, other).ratio() >= TYPO_SIMILARITY):
                typos[name] = other
    return typos
