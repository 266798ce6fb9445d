"""Reading a post's text whatever its encoding, and cleaning it for the tokenizer."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..config import TextPrepConfig

MAX_TEXT_BYTES = 64 * 1024  # never read more than this from one text file
FALLBACK_ENCODINGS = ("cp1252", "latin-1")  # guessed when the bytes are not UTF-8/UTF-16: may be wrong

URL = re.compile(r"(https?://\S*|www\.\S+)", re.IGNORECASE)
MENTION = re.compile(r"@\w+:?")
RT = re.compile(r"\bRT\b:?")
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
SPACES = re.compile(r"\s+")
HASHTAG = re.compile(r"#(\w+)")
CAMEL_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+|[^\W\d]+")  # "WeDemandSafety4Bapu" -> We Demand Safety 4 Bapu

# A short English stop-word list without negations and intensifiers, which carry sentiment.
STOPWORDS = frozenset(
    "a an the and or of to in on at for from by with as is are was were be been being am this that these those "
    "it its it's i me my we our you your he him his she her they them their what which who whom there here "
    "do does did doing have has had having will would shall should can could may might must about into over "
    "then than so such just also only own same other some any each both".split()
)


@dataclass
class DecodedText:
    text: str
    encoding: str  # "utf-8", "utf-8-sig", "utf-16", "cp1252", "latin-1"
    truncated: bool = False


def decode_text(raw: bytes) -> DecodedText:
    """Decode bytes: UTF-16 (BOM), UTF-8 (with or without BOM), then cp1252, then Latin-1 (never fails)."""
    truncated = len(raw) > MAX_TEXT_BYTES
    raw = raw[:MAX_TEXT_BYTES]
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return DecodedText(raw.decode("utf-16", errors="replace"), "utf-16", truncated)
    if raw.startswith(b"\xef\xbb\xbf"):
        return DecodedText(raw[3:].decode("utf-8", errors="replace"), "utf-8-sig", truncated)
    try:
        return DecodedText(raw.decode("utf-8"), "utf-8", truncated)
    except UnicodeDecodeError as error:
        if truncated and error.start >= len(raw) - 3:  # cut inside a multi-byte character
            return DecodedText(raw[: error.start].decode("utf-8"), "utf-8", truncated)
    try:
        return DecodedText(raw.decode("cp1252"), "cp1252", truncated)
    except UnicodeDecodeError:
        return DecodedText(raw.decode("latin-1"), "latin-1", truncated)


def clean_text(text: str, prep: TextPrepConfig) -> str:
    """Apply the configured cleaning steps; control characters are always removed."""
    text = CONTROL.sub(" ", text)[: prep.max_chars]
    if prep.strip_urls:
        text = URL.sub(" url " if prep.placeholders else " ", text)
    if prep.strip_mentions:
        text = MENTION.sub(" user " if prep.placeholders else " ", text)
    if prep.split_hashtags:
        text = HASHTAG.sub(lambda match: " " + " ".join(CAMEL_WORD.findall(match.group(1))) + " ", text)
    if prep.strip_rt:
        text = RT.sub(" ", text)
    if prep.lowercase:
        text = text.lower()
    if prep.remove_stopwords:
        text = " ".join(w for w in text.split() if w.lower() not in STOPWORDS)
    return SPACES.sub(" ", text).strip()
