"""``mmsent check``: validate a data folder and report every problem with the file and line it came from."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


from ..config import TextPrepConfig
from ..progress import progress
from .dataset import Split
from .images import ImageError, load_square_rgb
from .records import DataError, Problem, read_label_file


@dataclass
class CheckReport:
    label_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    posts: dict[str, int] = field(default_factory=dict)
    encodings: Counter = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return not any(p.fatal for p in self.problems)


def check_data(data_dir: Path, train_file: Path, test_file: Path, log=print) -> CheckReport:
    """Read both label files (paths) and every post they name; collect problems (fatal ones make the data unusable)."""
    data_dir = Path(data_dir)
    report = CheckReport()
    if not data_dir.is_dir():
        raise DataError(f"data folder not found: {data_dir}")
    if not (data_dir / "data").is_dir():
        report.problems.append(Problem(str(data_dir), "no 'data' folder with <guid>.txt and <guid>.jpg", fatal=True))
        return report
    for name, label_file, labelled in (("train", train_file, True), ("test", test_file, False)):
        parsed = read_label_file(Path(label_file), labelled)
        report.problems.extend(parsed.problems)
        split = Split(data_dir, parsed.records)
        report.posts[name] = len(parsed.records)
        if labelled:
            report.label_counts[name] = split.label_counts()
        split.texts(TextPrepConfig())
        report.encodings.update(split.encodings)
        report.problems.extend(split.problems)
        for record in progress(parsed.records, desc=f"checking {name} images", unit="image"):
            raw = split.read_image_bytes(record.guid)
            where = f"data/{record.guid}.jpg"
            if raw is None:
                report.problems.append(Problem(where, "image file missing; the post will be used as text only",
                                               kind="image_unusable"))
                continue
            try:
                load_square_rgb(raw, 32)
            except ImageError as error:
                report.problems.append(Problem(where, f"{error}; the post will be used as text only",
                                               kind="image_unusable"))
    return report


def format_report(report: CheckReport, limit: int = 50) -> str:
    lines = []
    for name, count in report.posts.items():
        lines.append(f"{name}: {count} posts")
    for name, counts in report.label_counts.items():
        total = max(sum(counts.values()), 1)
        lines.append(f"{name} labels: " + ", ".join(f"{k} {v} ({100 * v / total:.1f}%)" for k, v in counts.items()))
    lines.append("text encodings: " + ", ".join(f"{k} {v}" for k, v in report.encodings.most_common()))
    fatal = [p for p in report.problems if p.fatal]
    warnings = [p for p in report.problems if not p.fatal]
    lines.append(f"problems: {len(fatal)} fatal, {len(warnings)} warnings")
    for problem in (fatal + warnings)[:limit]:
        lines.append(f"  {problem}")
    if len(report.problems) > limit:
        lines.append(f"  ... and {len(report.problems) - limit} more (use --all to list every one)")
    lines.append("data set is usable" if report.usable else "data set CANNOT be used as given (fatal problems above)")
    return "\n".join(lines)
