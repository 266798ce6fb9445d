"""The published MVSA releases (Niu et al., MMM 2016): ``data/<id>.txt|.jpg`` and ``labelResultAll.txt``.

``labelResultAll.txt`` holds a header line, then ``ID<TAB>text_label,image_label`` (MVSA-Single) or three such
pairs, one per annotator (MVSA-Multiple). Cleaning follows the literature (MultiSentiNet, Xu & Mao 2017; CLMLF, Li
et al. 2022): a pair of opposite polarities (positive vs negative) has no label; where one side is neutral the other
decides; equal sides give that label. MVSA-Multiple keeps a post when at least two of its three annotators' merged
pairs agree. The published counts after cleaning are 4,511 posts (MVSA-Single) and 17,024 (MVSA-Multiple); each
dropped post is reported as a problem of the rule's kind, so ``mmsent check`` counts them.
"""

from __future__ import annotations

from collections import Counter
from functools import partial

from .formats import DataSource, PartRead, register_format
from .posts import SAFE_GUID, Problem, first_occurrence, folder_post

LABEL_FILE = "labelResultAll.txt"
POLARITIES = ("negative", "neutral", "positive")
RULES = {"mvsa_opposite": "text and image labels of opposite polarity",
         "mvsa_no_majority": "no label given by two of the three annotators"}


def merge_pair(text_label: str, image_label: str) -> str | None:
    """One annotator's text and image labels -> one label, or None for opposite polarities."""
    if text_label == image_label or image_label == "neutral":
        return text_label
    if text_label == "neutral":
        return image_label
    return None


def _columns(source: DataSource) -> int:
    """Tab-separated columns of the first data line of ``labelResultAll.txt`` (0 if there is none)."""
    path = source.path / LABEL_FILE
    if not (source.path.is_dir() and path.is_file()):
        return 0
    lines = [line for line in path.read_text(encoding="utf-8-sig", errors="replace").splitlines()[1:] if line.strip()]
    return len(lines[0].strip().split("\t")) if lines else 0


def _label_of(pairs: list[tuple[str, str]], where: str) -> tuple[str | None, Problem | None]:
    """The post's label after cleaning, or None and the problem of the rule that dropped it."""
    merged = [merge_pair(*pair) for pair in pairs]
    if len(pairs) == 1:
        if merged[0] is None:
            return None, Problem(where, f"text {pairs[0][0]}, image {pairs[0][1]}: opposite polarities (dropped)",
                                 kind="mvsa_opposite")
        return merged[0], None
    label, votes = Counter(m for m in merged if m is not None).most_common(1)[0] if any(merged) else (None, 0)
    if votes >= 2:
        return label, None
    given = ", ".join(m or "none (opposite pair)" for m in merged)
    return None, Problem(where, f"annotators give {given}: no label given by two of three (dropped)",
                         kind="mvsa_no_majority")


def _parse_line(line: str, pairs: int, where: str) -> tuple[str, list[tuple[str, str]]] | Problem:
    """``ID<TAB>t,i...`` -> (id, [(text, image)...]), or a fatal problem naming what is wrong."""
    fields = line.strip().split("\t")
    if len(fields) != 1 + pairs:
        return Problem(where, f"expected an id and {pairs} text,image pair(s) separated by tabs, found {line!r}",
                       fatal=True)
    guid = fields[0].strip()
    if not SAFE_GUID.match(guid) or guid in (".", ".."):
        return Problem(where, f"unsafe id {guid!r} (only letters, digits, '_', '-', '.')", fatal=True)
    parsed = [tuple(p.strip().lower() for p in field.split(",")) for field in fields[1:]]
    if any(len(pair) != 2 or not set(pair) <= set(POLARITIES) for pair in parsed):
        return Problem(where, f"labels must be text,image pairs of {', '.join(POLARITIES)}, found {line!r}",
                       fatal=True)
    return guid, parsed


def read_mvsa(source: DataSource, part: str, pairs: int) -> PartRead:
    """Every kept post is labelled: the ``test`` part is empty."""
    root, posts, problems, seen = source.path, [], [], {}
    if part == "test":
        return PartRead([], [], root)
    lines = (root / LABEL_FILE).read_text(encoding="utf-8-sig", errors="replace").splitlines()
    for number, line in enumerate(lines[1:], start=2):
        where = f"{LABEL_FILE}:{number}"
        parsed = _parse_line(line, pairs, where) if line.strip() else None
        if isinstance(parsed, Problem):
            problems.append(parsed)
        elif parsed is not None and first_occurrence(parsed[0], parsed[1], number, seen, where, problems):
            label, dropped = _label_of(parsed[1], where)
            problems.extend([dropped] if dropped else [])
            posts.extend([folder_post(root, parsed[0], label, where)] if label else [])
    if not (root / "data").is_dir():
        problems.append(Problem(str(root), "no 'data' folder with the posts' <id>.txt and <id>.jpg files", fatal=True))
    return PartRead(posts, problems, root)


for _name, _pairs, _release in (("mvsa-single", 1, "MVSA-Single"), ("mvsa-multiple", 3, "MVSA-Multiple")):
    register_format(_name, detect=lambda source, columns=1 + _pairs: _columns(source) == columns,
                    layout=f"the {_release} release: a folder with {LABEL_FILE} (ID<TAB>{_pairs} text,image "
                           f"pair(s)) and data/<id>.txt|.jpg")(partial(read_mvsa, pairs=_pairs))
