"""A part of a data set of any format (:mod:`mmsent.data.formats`) and its posts: :class:`Split`."""

from __future__ import annotations

import hashlib
import io
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..config import DataConfig, TextPrepConfig
from ..errors import InputError
from .formats import DataSource, read_part
from .images import encoded_bytes
from .posts import KINDS, DataError, Post, Problem, normalise_label, settle_labels
from .text import FALLBACK_ENCODINGS, MAX_TEXT_BYTES, clean_text, decode_text


@dataclass
class Split:
    """The posts of one part of a data set, of any format, and their label set.

    ``records``: the :class:`Post` records. ``label_names``: the class names in class order (empty = the sorted
    names of the posts' labels); ``labels`` are indices into it.
    """

    data_dir: Path
    records: list[Post]
    problems: list[Problem] = field(default_factory=list)
    encodings: Counter = field(default_factory=Counter)
    label_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.label_names = tuple(self.label_names) or tuple(sorted({p.label for p in self.records if p.label}))

    @property
    def guids(self) -> list[str]:
        return [r.guid for r in self.records]

    @property
    def labels(self) -> list[int | None]:
        index = {name: i for i, name in enumerate(self.label_names)}
        return [None if r.label is None else index[r.label] for r in self.records]

    def post(self, guid: str) -> Post:
        if len(getattr(self, "_by_guid", ())) != len(self.records):
            self._by_guid = {post.guid: post for post in self.records}
        return self._by_guid[guid]

    def text_path(self, guid: str) -> Path | None:
        return self.post(guid).text_path

    def image_path(self, guid: str) -> Path | None:
        return self.post(guid).image_path

    def image_where(self, guid: str) -> str:
        """How problems name the post's image (``data/<guid>.jpg``, ``posts.csv:row 3 (image)``)."""
        return self.post(guid).image_where

    def text_where(self, guid: str) -> str:
        return self.post(guid).text_where

    def read_image_bytes(self, guid: str) -> bytes | None:
        post = self.post(guid)
        if post.image is not None:
            return post.image
        path = post.image_path
        try:
            return None if path is None else path.read_bytes()
        except OSError:
            return None

    def read_text_bytes(self, guid: str) -> bytes | None:
        """The text's bytes (at most one byte past ``MAX_TEXT_BYTES``); inline text as UTF-8; None if missing."""
        post = self.post(guid)
        if post.text is not None:
            return post.text.encode("utf-8")[: MAX_TEXT_BYTES + 1]
        try:
            with open(post.text_path, "rb") as handle:
                return handle.read(MAX_TEXT_BYTES + 1)
        except (OSError, TypeError):
            return None

    def texts(self, prep: TextPrepConfig) -> list[str]:
        """Cleaned text of every post; missing files give "" and a warning (recorded in ``problems``)."""
        texts = []
        self.encodings.clear()
        for post in self.records:
            raw = self.read_text_bytes(post.guid)
            if raw is None:
                missing = "text file missing" if post.has_text_source else "no text column"
                self.warn(post.text_where, f"{missing}; using an empty text", "text_missing")
                texts.append("")
                continue
            decoded = decode_text(raw)
            self.encodings[decoded.encoding] += 1
            if decoded.truncated:
                self.warn(post.text_where, f"longer than {MAX_TEXT_BYTES} bytes; truncated", "text_truncated")
            text = clean_text(decoded.text, prep)
            if not decoded.text.strip():
                self.warn(post.text_where, "empty text", "text_empty")
            texts.append(text)
        return texts

    def warn(self, where: str, message: str, kind: str = "") -> None:
        """Record a non-fatal problem once (the encoders and the feature cache report theirs here too)."""
        problem = Problem(where, message, kind=kind)
        if not any(p.where == where and p.message == message for p in self.problems):
            self.problems.append(problem)

    def guids_with(self, *kinds: str) -> list[str]:
        """Guids (in split order) of posts with a warning of one of ``kinds`` (e.g. "image_unusable") at the
        post's ``text_where`` / ``image_where``."""
        wheres = {p.where for p in self.problems if p.kind in kinds}
        return [r.guid for r in self.records if {r.text_where, r.image_where} & wheres]

    def summary(self) -> dict[str, int]:
        """Counts of what was dropped, repaired or worked around (see ``posts.KINDS``), and fallback decodings."""
        counts = {kind: len({p.where for p in self.problems if p.kind == kind and not p.fatal}) for kind in KINDS}
        counts["text_fallback_encoding"] = sum(v for k, v in self.encodings.items() if k in FALLBACK_ENCODINGS)
        return counts

    def fingerprint(self) -> str:
        """Hash of every guid, label, text and image byte: the cache key of this split's content."""
        digest = hashlib.sha256()
        for record, label in zip(self.records, self.labels):
            digest.update(f"{record.guid}\0{label}\0".encode())
            for raw in (self.read_text_bytes(record.guid), self.read_image_bytes(record.guid)):
                digest.update(b"\1" if raw is None else hashlib.sha256(raw).digest())
        return digest.hexdigest()

    def label_counts(self) -> dict[str, int]:
        counts = Counter(self.labels)
        return {name: counts.get(i, 0) for i, name in enumerate(self.label_names)}


def open_data(path: Path | str, part: str = "train", data: DataConfig | None = None, train_file: Path | None = None,
              test_file: Path | None = None, allow_empty: bool = False) -> Split:
    """Read ``part`` ("train": the labelled posts, "test": the posts to predict) of the data set at ``path`` in
    any registered format; raise DataError listing every fatal problem, or if the part holds no post."""
    source = DataSource(Path(path), data or DataConfig(), train_file, test_file)
    read = read_part(source, part)
    fatal = [p for p in read.problems if p.fatal]
    if fatal:
        raise DataError(f"{path} cannot be used:\n  " + "\n  ".join(str(p) for p in fatal))
    if not read.posts and not allow_empty:
        raise DataError(f"{path} holds no {'labelled posts' if part == 'train' else 'posts to predict'}")
    return Split(read.data_dir, read.posts, problems=read.problems, label_names=read.label_names)


def posts_split(texts: list | None, images: list | None, labels: list | None = None,
                label_names: tuple[str, ...] = ()) -> Split:
    """Posts given in memory as a :class:`Split`: ``texts[i]`` (a string or None) with ``images[i]`` (a path, bytes,
    a PIL image or None) and ``labels[i]`` (a label name; ``labels=None``: posts to predict). Either of ``texts`` and
    ``images`` may be None (no post has one). Guids are the posts' positions ("0", "1", ...); ``label_names`` fixes
    the label set and its order (as ``--labels``), else it is the sorted names given. Raises InputError for lists of
    different lengths or a value of the wrong kind, DataError for labels that cannot train (a single class)."""
    given = {name: values for name, values in (("texts", texts), ("images", images), ("labels", labels))
             if values is not None}
    lengths = {name: len(values) for name, values in given.items()}
    if not {"texts", "images"} & set(given):
        raise InputError("no posts: give texts, images or both")
    if len(set(lengths.values())) > 1:
        raise InputError("texts, images and labels must be as long as each other, got "
                         + ", ".join(f"{length} {name}" for name, length in lengths.items()))
    n = max(lengths.values())
    posts = [_memory_post(i, None if texts is None else texts[i], None if images is None else images[i],
                          None if labels is None else labels[i], labels is not None) for i in range(n)]
    names, problems = (tuple(label_names), []) if labels is None else settle_labels(posts, tuple(label_names))
    fatal = [p for p in problems if p.fatal]
    if fatal:
        raise DataError("the labels cannot be used:\n  " + "\n  ".join(str(p) for p in fatal[:10]))
    return Split(Path("."), posts, label_names=names)


def _memory_post(index: int, text, image, label, labelled: bool) -> Post:
    where = f"post {index}"
    if text is not None and not isinstance(text, str):
        raise InputError(f"{where}: a text is a string or None, not {type(text).__name__}")
    if labelled and not (isinstance(label, str) and label.strip()):
        raise InputError(f"{where}: a label is a class name (a non-empty string), not {label!r}")
    post = Post(str(index), normalise_label(label) if labelled else None, where, text=text,
                text_where=f"{where} (text)", image_where=f"{where} (image)", label_where=f"{where} (label)")
    if isinstance(image, (str, os.PathLike)):
        post.image_path = Path(image)
    elif isinstance(image, (bytes, bytearray, memoryview)):
        post.image = bytes(image)
    elif isinstance(image, Image.Image):
        post.image = encoded_bytes(image) or _png_bytes(image)
    elif image is not None:
        raise InputError(f"{where}: an image is a path, bytes, a PIL image or None, not {type(image).__name__}")
    return post


def _png_bytes(image: Image.Image) -> bytes:
    """A PIL image made in memory, encoded losslessly (its pixels as they are)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
