"""A data folder (``train.txt``, ``test_without_label.txt``, ``data/<guid>.txt|.jpg``) and its posts."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..config import LABELS, TextPrepConfig
from .records import KINDS, DataError, Problem, Record, read_label_file, require_usable
from .text import FALLBACK_ENCODINGS, MAX_TEXT_BYTES, clean_text, decode_text


@dataclass
class Split:
    """The posts of one label file inside a data folder."""

    data_dir: Path
    records: list[Record]
    problems: list[Problem] = field(default_factory=list)
    encodings: Counter = field(default_factory=Counter)

    @property
    def guids(self) -> list[str]:
        return [r.guid for r in self.records]

    @property
    def labels(self) -> list[int]:
        return [r.label for r in self.records]

    def text_path(self, guid: str) -> Path:
        return self.data_dir / "data" / f"{guid}.txt"

    def image_path(self, guid: str) -> Path:
        return self.data_dir / "data" / f"{guid}.jpg"

    def read_image_bytes(self, guid: str) -> bytes | None:
        path = self.image_path(guid)
        try:
            return path.read_bytes()
        except OSError:
            return None

    def read_text_bytes(self, guid: str) -> bytes | None:
        try:
            with open(self.text_path(guid), "rb") as handle:
                return handle.read(MAX_TEXT_BYTES + 1)
        except OSError:
            return None

    def texts(self, prep: TextPrepConfig) -> list[str]:
        """Cleaned text of every post; missing files give "" and a warning (recorded in ``problems``)."""
        texts = []
        self.encodings.clear()
        for guid in self.guids:
            raw = self.read_text_bytes(guid)
            if raw is None:
                self.warn(f"data/{guid}.txt", "text file missing; using an empty text", "text_missing")
                texts.append("")
                continue
            decoded = decode_text(raw)
            self.encodings[decoded.encoding] += 1
            if decoded.truncated:
                self.warn(f"data/{guid}.txt", f"longer than {MAX_TEXT_BYTES} bytes; truncated", "text_truncated")
            text = clean_text(decoded.text, prep)
            if not decoded.text.strip():
                self.warn(f"data/{guid}.txt", "empty text", "text_empty")
            texts.append(text)
        return texts

    def warn(self, where: str, message: str, kind: str = "") -> None:
        """Record a non-fatal problem once (the encoders and the feature cache report theirs here too)."""
        problem = Problem(where, message, kind=kind)
        if not any(p.where == where and p.message == message for p in self.problems):
            self.problems.append(problem)

    def guids_with(self, *kinds: str) -> list[str]:
        """Guids (in split order) of posts with a warning of one of ``kinds`` (e.g. "image_unusable")."""
        flagged = {p.where.split("/", 1)[1].rsplit(".", 1)[0] for p in self.problems
                   if p.kind in kinds and p.where.startswith("data/")}
        return [guid for guid in self.guids if guid in flagged]

    def summary(self) -> dict[str, int]:
        """Counts of what was dropped, repaired or worked around (see ``records.KINDS``), and fallback decodings."""
        counts = {kind: len({p.where for p in self.problems if p.kind == kind and not p.fatal}) for kind in KINDS}
        counts["text_fallback_encoding"] = sum(v for k, v in self.encodings.items() if k in FALLBACK_ENCODINGS)
        return counts

    def fingerprint(self) -> str:
        """Hash of every guid, label, text and image byte: the cache key of this split's content."""
        digest = hashlib.sha256()
        for record in self.records:
            digest.update(f"{record.guid}\0{record.label}\0".encode())
            for raw in (self.read_text_bytes(record.guid), self.read_image_bytes(record.guid)):
                digest.update(b"\1" if raw is None else hashlib.sha256(raw).digest())
        return digest.hexdigest()

    def label_counts(self) -> dict[str, int]:
        counts = Counter(self.labels)
        return {name: counts.get(i, 0) for i, name in enumerate(LABELS)}


def open_split(data_dir: Path, label_file: Path | str, labelled: bool) -> Split:
    """Read and validate ``label_file`` (a path) naming posts of ``data_dir``; raise DataError if it cannot be used."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data folder not found: {data_dir}")
    if not (data_dir / "data").is_dir():
        raise DataError(f"{data_dir} has no 'data' folder with the posts' <guid>.txt and <guid>.jpg files")
    parsed = read_label_file(Path(label_file), labelled)
    records = require_usable(parsed)
    return Split(data_dir, records, problems=list(parsed.problems))
