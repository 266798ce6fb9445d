"""The registry of data formats: each reads one part (``train``: labelled posts, ``test``: posts to predict) of a
data set into :class:`~mmsent.data.posts.Post` records, and says whether it recognises a path.

Formats register with :func:`register_format` into ``mmsent.registry.FORMATS``, which imports the modules that
define them (its ``providers``, in detection order) on first use; they import this interface, never the reverse.
``--format`` choices and detection are derived from the registry.
The label set is settled here for every format (:func:`~mmsent.data.posts.settle_labels`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..config import normalised_labels
from ..registry import FORMATS
from .posts import DataError, Post, Problem, settle_labels

if TYPE_CHECKING:
    from ..config import DataConfig


def _default_data_config() -> "DataConfig":
    from ..config import data_config_class  # composed from the formats, which import this module: not at its import

    return data_config_class()()

PARTS = ("train", "test")  # labelled posts, posts to predict


@dataclass
class DataSource:
    """What to read: ``--data`` (a folder or a file), how (``config``) and, for the lab folder, its label files."""

    path: Path
    config: "DataConfig" = field(default_factory=_default_data_config)
    train_file: Path | None = None
    test_file: Path | None = None

    @property
    def fixed_labels(self) -> tuple[str, ...]:
        """``--labels``, normalised (empty = from the data)."""
        return normalised_labels(self.config.labels)


@dataclass
class PartRead:
    """The posts of one part as read, every problem found, and the folder relative paths start from."""

    posts: list[Post]
    problems: list[Problem]
    data_dir: Path
    label_names: tuple[str, ...] = ()


def register_format(name: str, detect: Callable[[DataSource], bool], layout: str, config: type | None = None):
    """Decorator: register ``reader(source, part) -> PartRead`` under ``name``; ``detect(source)`` recognises it.
    ``config``: the format's own options, a dataclass of :func:`mmsent.config.option` fields, joined into
    ``DataConfig`` (config keys ``data.<field>``); the reader finds them, and the options every format shares, in
    ``source.config``."""
    return FORMATS.register(name, config=config, detect=detect, layout=layout)


def describe_formats() -> str:
    return "; ".join(f"{name}: {FORMATS.metadata(name)['layout']}" for name in FORMATS.names())


def detect_format(source: DataSource) -> str:
    """The first registered format that recognises ``source.path``; DataError listing the formats if none does."""
    if not source.path.exists():
        raise DataError(f"data {'file' if source.path.suffix else 'folder'} not found: {source.path}")
    for name in FORMATS.names():
        if FORMATS.metadata(name)["detect"](source):
            return name
    raise DataError(f"cannot tell the format of {source.path}; the formats are: {describe_formats()} "
                    f"(or name one with --format)")


def format_of(source: DataSource) -> str:
    """``--format`` if given (checked against the registry), else the detected format."""
    if source.config.format:
        FORMATS.get(source.config.format)
        return source.config.format
    return detect_format(source)


def read_part(source: DataSource, part: str) -> PartRead:
    """Read ``part`` of ``source`` with its format and settle its label set (problems are collected, not raised)."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    read = FORMATS.get(format_of(source))(source, part)
    fixed = source.fixed_labels
    if part == "train":
        read.label_names, problems = settle_labels(read.posts, fixed)
        read.problems.extend(problems)
        read.posts = [post for post in read.posts if post.label in read.label_names]
    else:
        read.label_names = fixed
    return read
