"""``mmsent check``: validate a data set of any format and report every problem with the file and row it came from."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


from ..config import DataConfig, OcrConfig, TextPrepConfig
from ..progress import progress
from .dataset import Split
from .formats import PARTS, DataSource, format_of, read_part
from .images import ImageError, load_square_rgb
from .mvsa import RULES
from .posts import Problem


@dataclass
class CheckReport:
    label_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    posts: dict[str, int] = field(default_factory=dict)
    encodings: Counter = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)
    image_text: dict[str, dict] = field(default_factory=dict)  # part -> {"with_text", "images", "examples"} (--ocr)

    @property
    def usable(self) -> bool:
        return not any(p.fatal for p in self.problems)


def check_data(data_dir: Path, train_file: Path | None = None, test_file: Path | None = None, log=print,
               data: DataConfig | None = None, ocr: OcrConfig | None = None) -> CheckReport:
    """Read both parts of a data set of any format and every post they name; collect problems (fatal ones make
    the data unusable). ``train_file`` / ``test_file``: the lab folder's label files (default: the standard names).
    ``ocr``: also read the text in every image (through the OCR cache) and count the images that hold some."""
    source = DataSource(Path(data_dir), data or DataConfig(), train_file, test_file)
    report = CheckReport()
    format_of(source)  # DataError for data that is absent or of no known format
    for name in PARTS:
        read = read_part(source, name)
        report.problems.extend(p for p in read.problems if p not in report.problems)
        split = Split(read.data_dir, read.posts, label_names=read.label_names)
        report.posts[name] = len(read.posts)
        if name == "train":
            report.label_counts[name] = split.label_counts()
        split.texts(TextPrepConfig())
        report.encodings.update(split.encodings)
        report.problems.extend(split.problems)
        report.problems.extend(_image_problems(split, name))
        if ocr is not None and split.records:
            report.image_text[name] = _image_texts(split, ocr)
    return report


def _image_texts(split: Split, ocr: OcrConfig) -> dict:
    from ..ocr import split_image_texts

    texts = split_image_texts(split, ocr, ocr.workers)
    images = sum(split.read_image_bytes(guid) is not None for guid in split.guids)
    examples = [(post.image_where, text) for post, text in zip(split.records, texts) if text][:3]
    return {"with_text": sum(bool(text) for text in texts), "images": images, "examples": examples}


def _image_problems(split: Split, name: str) -> list[Problem]:
    """A warning for every post whose image is missing or cannot be decoded (it will rest on its text)."""
    problems = []
    for post in progress(split.records, desc=f"checking {name} images", unit="image"):
        raw = split.read_image_bytes(post.guid)
        if raw is None:
            missing = "image file missing" if post.image_path is not None else "no image"
            problems.append(Problem(post.image_where, f"{missing}; the post will be used as text only",
                                    kind="image_unusable"))
            continue
        try:
            load_square_rgb(raw, 32)
        except ImageError as error:
            problems.append(Problem(post.image_where, f"{error}; the post will be used as text only",
                                    kind="image_unusable"))
    return problems


def format_report(report: CheckReport, limit: int = 50) -> str:
    lines = []
    for name, count in report.posts.items():
        lines.append(f"{name}: {count} posts")
    for name, counts in report.label_counts.items():
        total = max(sum(counts.values()), 1)
        lines.append(f"{name} labels: " + ", ".join(f"{k} {v} ({100 * v / total:.1f}%)" for k, v in counts.items()))
    lines.append("text encodings: " + ", ".join(f"{k} {v}" for k, v in report.encodings.most_common()))
    for name, found in report.image_text.items():
        share = found["with_text"] / max(found["images"], 1)
        lines.append(f"{name} images with text: {found['with_text']} of {found['images']} ({100 * share:.1f}%)"
                     + "".join(f"\n  {where}: {text[:100]!r}" for where, text in found["examples"]))
    fatal = [p for p in report.problems if p.fatal]
    warnings = [p for p in report.problems if not p.fatal]
    lines.append(f"problems: {len(fatal)} fatal, {len(warnings)} warnings")
    dropped = Counter(p.kind for p in report.problems if p.kind in RULES)
    if dropped:
        lines.append("posts dropped by cleaning rule: " + ", ".join(f"{RULES[kind]}: {dropped[kind]}"
                                                                    for kind in RULES if dropped[kind]))
    for problem in (fatal + warnings)[:limit]:
        lines.append(f"  {problem}")
    if len(report.problems) > limit:
        lines.append(f"  ... and {len(report.problems) - limit} more (use --all to list every one)")
    lines.append("data set is usable" if report.usable else "data set CANNOT be used as given (fatal problems above)")
    return "\n".join(lines)
