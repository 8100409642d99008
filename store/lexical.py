"""Keyword side of hybrid retrieval: BM25 scoring over the terms of ``nodes.text.terms``."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from nodes.text import terms

__all__ = ["BM25Scorer", "KeywordIndex", "TokenizedDoc", "tokenize_doc"]


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
    found = terms(text)
    return TokenizedDoc(Counter(found), len(found))


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
            query_terms: Terms of the query (``terms(query)``).

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


class KeywordIndex:
    """BM25 over documents that come and go: postings kept up to date, one document at a time.

    Scores match :class:`BM25Scorer` over the same documents (the same normalization), but a
    query reads only the postings of its own terms, so its cost follows how many documents
    share those terms, not how many documents there are.
    """

    def __init__(self, *, k1: float = 1.2, b: float = 0.75) -> None:
        """Start empty.

        Args:
            k1: Term-frequency saturation.
            b: Length normalization strength.
        """
        self.k1 = k1
        self.b = b
        self._docs: dict[str, TokenizedDoc] = {}
        self._postings: dict[str, dict[str, int]] = {}
        self._total_length = 0

    def __len__(self) -> int:
        return len(self._docs)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._docs

    def put(self, doc_id: str, doc: TokenizedDoc) -> None:
        """Add a document, or replace the one with this id.

        Args:
            doc_id: The document's id.
            doc: Its terms.
        """
        self.remove(doc_id)
        self._docs[doc_id] = doc
        self._total_length += doc.length
        for term, tf in doc.terms.items():
            self._postings.setdefault(term, {})[doc_id] = tf

    def remove(self, doc_id: str) -> None:
        """Forget a document (an unknown id is ignored).

        Args:
            doc_id: The document's id.
        """
        doc = self._docs.pop(doc_id, None)
        if doc is None:
            return
        self._total_length -= doc.length
        for term in doc.terms:
            posting = self._postings.get(term)
            if posting is not None:
                posting.pop(doc_id, None)
                if not posting:
                    del self._postings[term]

    def scores(
        self, query_terms: Iterable[str], *, exclude: Collection[str] = ()
    ) -> dict[str, float]:
        """Normalized BM25 of the documents that share a term with the query.

        The statistics (document count, frequencies, average length) leave out ``exclude``,
        as if those documents were not indexed; see :meth:`BM25Scorer.scores` for the
        normalization.

        Args:
            query_terms: Terms of the query (``terms(query)``).
            exclude: Ids to leave out.

        Returns:
            ``{doc_id: score}`` for the documents scoring above 0 (the others score 0).
        """
        gone = [self._docs[d] for d in exclude if d in self._docs]
        count = len(self._docs) - len(gone)
        if count <= 0:
            return {}
        total_length = self._total_length - sum(d.length for d in gone)
        avg = (total_length / count) or 1.0
        distinct = list(dict.fromkeys(query_terms))

        def frequency(term: str) -> int:
            posting = self._postings.get(term)
            if not posting:
                return 0
            return len(posting) - sum(1 for d in gone if term in d.terms)

        def idf(df: int) -> float:
            return math.log(1.0 + (count - df + 0.5) / (df + 0.5))

        frequencies = {t: frequency(t) for t in distinct}
        weights = {t: idf(df) for t, df in frequencies.items() if df > 0}
        if not weights:
            return {}
        bound = sum(idf(df) for df in frequencies.values()) * (self.k1 + 1.0)
        excluded = set(exclude)
        totals: dict[str, float] = {}
        for term, weight in weights.items():
            for doc_id, tf in self._postings[term].items():
                if doc_id in excluded:
                    continue
                norm = self.k1 * (1.0 - self.b + self.b * self._docs[doc_id].length / avg)
                totals[doc_id] = totals.get(doc_id, 0.0) + weight * tf * (self.k1 + 1.0) / (
                    tf + norm
                )
        return {doc_id: total / bound for doc_id, total in totals.items()}
