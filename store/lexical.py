"""Keyword side of hybrid retrieval: English/Chinese tokenization and BM25 scoring."""

from __future__ import annotations

import math
import re
import threading
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import snowballstemmer

__all__ = ["BM25Scorer", "TokenizedDoc", "tokenize", "tokenize_doc"]

# Han, Hiragana/Katakana, Hangul and the CJK compatibility blocks: scripts written without spaces.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\U00020000-\U0002a6df"
_TOKEN_RE = re.compile(rf"[{_CJK}]+|[^\W_{_CJK}]+(?:'[^\W_{_CJK}]+)*")
_CJK_RE = re.compile(rf"[{_CJK}]")

# Function words that carry no topic; kept short on purpose (BM25's IDF handles the rest).
_STOPWORD_TEXT = """
a an and are as at be been but by did do does for from had has have he her hers him his i if
in into is it its me my of on or our she so than that the their them then there these they
this those to was we were what when where which who whom why will with you your yours s t
just about also very really oh yeah
"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())

_stemmer_local = threading.local()


def _stemmer() -> snowballstemmer.stemmer:
    # Snowball stemmer objects keep per-call state, so each thread gets its own.
    stemmer = getattr(_stemmer_local, "stemmer", None)
    if stemmer is None:
        stemmer = snowballstemmer.stemmer("english")
        _stemmer_local.stemmer = stemmer
    return stemmer


@lru_cache(maxsize=65536)
def _stem(word: str) -> str:
    return str(_stemmer().stemWord(word))


def _cjk_grams(run: str) -> list[str]:
    # Character bigrams (as Lucene's CJK analyzer does): no dictionary, no network, and
    # robust for Chinese words of two characters, the most common length.
    if len(run) == 1:
        return [run]
    return [run[i : i + 2] for i in range(len(run) - 1)]


def tokenize(text: str) -> list[str]:
    """Split text into index terms.

    Latin-script words are lowercased, stripped of possessive ``'s``, filtered against a short
    stop list and Snowball-stemmed; runs of CJK characters become overlapping character
    bigrams (a lone character stays a unigram). Digits are kept, so dates and order numbers
    match.

    Args:
        text: Any text.

    Returns:
        The terms, in text order (duplicates kept: they are term frequencies).
    """
    normalized = unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'")
    terms: list[str] = []
    for match in _TOKEN_RE.finditer(normalized):
        token = match.group()
        if _CJK_RE.match(token):
            terms.extend(_cjk_grams(token))
            continue
        if token.endswith("'s"):
            token = token[:-2]
        token = token.replace("'", "")
        if not token or token in _STOPWORDS:
            continue
        terms.append(_stem(token) if token.isalpha() else token)
    return terms


@dataclass(frozen=True, slots=True)
class TokenizedDoc:
    """Term frequencies and length of one document."""

    terms: Counter[str]
    length: int


@lru_cache(maxsize=50000)
def tokenize_doc(text: str) -> TokenizedDoc:
    """Tokenize a document once (cached: the same stored text is scored on every search).

    Args:
        text: The indexed text of a document.

    Returns:
        Its term frequencies and length in terms.
    """
    terms = tokenize(text)
    return TokenizedDoc(Counter(terms), len(terms))


class BM25Scorer:
    """Okapi BM25 over a fixed set of documents, with a score normalized to [0, 1).

    Statistics (document frequencies, average length) come from the documents given, which
    is what a per-thread (or per-user) filter should see. Built per search from the store's
    own documents, so it is never stale after concurrent writes or deletions.
    """

    def __init__(self, docs: Sequence[TokenizedDoc], *, k1: float = 1.2, b: float = 0.75) -> None:
        """Collect the statistics.

        Args:
            docs: The tokenized documents.
            k1: Term-frequency saturation.
            b: Length normalization strength.
        """
        self.docs = docs
        self.k1 = k1
        self.b = b
        self.avg_length = (sum(d.length for d in docs) / len(docs)) if docs else 0.0
        self._df: Counter[str] = Counter()
        for doc in docs:
            self._df.update(doc.terms.keys())

    def idf(self, term: str) -> float:
        """Inverse document frequency (Lucene's variant, always positive).

        Args:
            term: An index term.

        Returns:
            ``ln(1 + (N - df + 0.5) / (df + 0.5))``.
        """
        n = len(self.docs)
        df = self._df.get(term, 0)
        return math.log(1.0 + (n - df + 0.5) / (df + 0.5))

    def scores(self, query_terms: Iterable[str]) -> list[float]:
        """Score every document against the query.

        The raw BM25 sum is divided by its upper bound, ``sum(idf(t) * (k1 + 1))`` over the
        query's distinct terms, so a score is comparable across queries and usable with a
        fixed floor: 0 shares no term, values near 1 contain every query term many times.

        Args:
            query_terms: Terms of the query (``tokenize(query)``).

        Returns:
            One normalized score per document, in the order given.
        """
        distinct = list(dict.fromkeys(query_terms))
        weights = {t: self.idf(t) for t in distinct if t in self._df}
        if not weights or not self.docs:
            return [0.0] * len(self.docs)
        # Terms no document has still count in the bound: matching half of the query's
        # terms should not score like matching all of them.
        bound = sum(self.idf(t) for t in distinct) * (self.k1 + 1.0)
        out: list[float] = []
        avg = self.avg_length or 1.0
        for doc in self.docs:
            norm = self.k1 * (1.0 - self.b + self.b * doc.length / avg)
            total = 0.0
            for term, weight in weights.items():
                tf = doc.terms.get(term)
                if tf:
                    total += weight * tf * (self.k1 + 1.0) / (tf + norm)
            out.append(total / bound)
        return out
