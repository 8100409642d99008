"""Embedders: the offline MiniLM and the character-frequency fake."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import pytest

from nodes.memory import Embedder
from store.embeddings import CharFrequencyEmbedder, SentenceTransformerEmbedder, load_embedder


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def _norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


@pytest.fixture(scope="module")
def minilm() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder()


def test_minilm_vectors_have_model_dimension_and_unit_length(
    minilm: SentenceTransformerEmbedder,
) -> None:
    vectors = minilm.embed_documents(["The order ships on Monday.", "我的订单什么时候发货?"])
    assert minilm.dimension == 384
    assert [len(v) for v in vectors] == [384, 384]
    assert all(abs(_norm(v) - 1.0) < 1e-4 for v in vectors)
    assert isinstance(minilm, Embedder)


def test_minilm_ranks_paraphrase_above_unrelated_text(
    minilm: SentenceTransformerEmbedder,
) -> None:
    query = minilm.embed_query("Where is my package?")
    related, unrelated = minilm.embed_documents(
        ["My parcel has not arrived yet.", "I enjoy painting sunsets with watercolors."]
    )
    assert _cosine(query, related) > _cosine(query, unrelated) + 0.1


def test_minilm_is_safe_to_share_between_threads(minilm: SentenceTransformerEmbedder) -> None:
    expected = minilm.embed_query("concurrent embedding")
    results: list[list[float]] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(minilm.embed_query("concurrent embedding"))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert all(_cosine(r, expected) > 0.9999 for r in results)


def test_embed_documents_refuses_a_bare_string(minilm: SentenceTransformerEmbedder) -> None:
    with pytest.raises(TypeError, match="sequence of texts"):
        minilm.embed_documents("one string")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sequence of texts"):
        CharFrequencyEmbedder().embed_documents("one string")  # type: ignore[arg-type]


def test_fake_is_deterministic_normalized_and_case_insensitive() -> None:
    first, second = CharFrequencyEmbedder(64), CharFrequencyEmbedder(64)
    a = first.embed_query("Order 1234 shipped")
    assert a == second.embed_query("Order 1234 shipped")
    assert a == first.embed_query("order 1234   SHIPPED")
    assert len(a) == 64
    assert abs(_norm(a) - 1.0) < 1e-9


def test_fake_ranks_by_shared_characters_including_cjk() -> None:
    fake = CharFrequencyEmbedder()
    query = fake.embed_query("北京烤鸭")
    close, far = fake.embed_documents(["我喜欢北京烤鸭", "the weather is nice"])
    assert _cosine(query, close) > 0.5
    assert _cosine(query, close) > _cosine(query, far)
    assert fake.embed_query("   ") == [0.0] * fake.dimension


def test_fake_rejects_a_tiny_dimension() -> None:
    with pytest.raises(ValueError, match="at least 8"):
        CharFrequencyEmbedder(2)


def test_load_embedder_resolves_names(minilm: SentenceTransformerEmbedder) -> None:
    assert isinstance(load_embedder("hash"), CharFrequencyEmbedder)
    assert isinstance(load_embedder("fake"), CharFrequencyEmbedder)
    default = load_embedder("all-MiniLM-L6-v2")
    assert isinstance(default, SentenceTransformerEmbedder)
    assert default.dimension == 384
    with pytest.raises(ValueError, match="empty"):
        load_embedder("  ")


def test_load_embedder_reports_a_missing_model_path(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="no-such-model"):
        load_embedder(str(tmp_path / "no-such-model"))


def test_minilm_pads_texts_to_few_shapes_without_changing_vectors(
    minilm: SentenceTransformerEmbedder,
) -> None:
    # Each new input shape costs a worker memory for good (CPU kernels are compiled and cached
    # per shape), so texts of 60 different lengths must reach the encoder as a few shapes.
    widths: list[int] = []
    hook = minilm._model[0].register_forward_pre_hook(
        lambda _module, args: widths.append(int(args[0]["input_ids"].shape[1]))
    )
    texts = [" ".join(["word"] * n) for n in range(1, 61)]
    try:
        vectors = [minilm.embed_query(text) for text in texts]
    finally:
        hook.remove()
    assert len(widths) == len(texts)
    assert {w % 16 for w in widths} == {0}
    assert len(set(widths)) <= 5
    unpadded = minilm._model.encode(texts, normalize_embeddings=True, batch_size=1)
    pairs = zip(vectors, unpadded, strict=True)
    assert all(_cosine(v, [float(x) for x in u]) > 0.99999 for v, u in pairs)
