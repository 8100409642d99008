"""ChromaMemory with the character-frequency fake: filters, ranking, dedupe, deletion, reopen."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from nodes.errors import ThreadDeletedError
from nodes.memory import MemoryRecord, MemoryStore
from nodes.text import terms
from store.embeddings import CharFrequencyEmbedder
from store.lexical import BM25Scorer, tokenize_doc
from store.vector_memory import ChromaMemory, stamp_text


def rec(
    thread: str,
    turn: int,
    text: str,
    *,
    role: str = "user",
    user: str = "alice",
    timestamp: str | None = "2025-03-14T10:00:00+00:00",
) -> MemoryRecord:
    return MemoryRecord(
        id=f"{thread}:{turn}:{role}",
        text=text,
        thread_id=thread,
        user_id=user,
        turn=turn,
        role=role,
        timestamp=timestamp,
    )


@pytest.fixture
def memory() -> ChromaMemory:
    return ChromaMemory.ephemeral(CharFrequencyEmbedder())


def texts(hits: list) -> list[str]:
    return [h.record.text for h in hits]


def test_implements_the_memory_store_protocol(memory: ChromaMemory) -> None:
    assert isinstance(memory, MemoryStore)


def test_relevant_turn_ranks_first_and_scores_are_ordered(memory: ChromaMemory) -> None:
    memory.add(
        [
            rec("t1", 1, "My dog is a golden retriever named Biscuit."),
            rec("t1", 2, "I work as a nurse at the city hospital."),
            rec("t1", 3, "We are planning a trip to Lisbon in June."),
            rec("t1", 4, "Tea or coffee? Coffee, always, black."),
        ]
    )
    hits = memory.search("what is my dog called", thread_id="t1", user_id=None, k=4)
    assert hits[0].record.text.startswith("My dog")
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s < 1.0 for s in scores)
    first = hits[0].record
    assert (first.thread_id, first.user_id, first.turn, first.role) == ("t1", "alice", 1, "user")
    assert first.timestamp == "2025-03-14T10:00:00+00:00"


def test_search_stays_within_the_thread(memory: ChromaMemory) -> None:
    memory.add([rec("t1", 1, "The invoice number is INV-7731."), rec("t2", 1, "Invoice INV-7731")])
    hits = memory.search("invoice INV-7731", thread_id="t1", user_id=None, k=5)
    assert [h.record.thread_id for h in hits] == ["t1"]


def test_cross_thread_search_is_limited_to_the_user(memory: ChromaMemory) -> None:
    memory.add(
        [
            rec("a1", 1, "I am allergic to peanuts."),
            rec("a2", 1, "Peanut butter cookies are my favourite snack."),
            rec("b1", 1, "I am allergic to peanuts too.", user="bob"),
        ]
    )
    hits = memory.search("peanut allergy", thread_id=None, user_id="alice", k=5)
    assert {h.record.thread_id for h in hits} == {"a1", "a2"}
    assert all(h.record.user_id == "alice" for h in hits)


def test_turns_still_in_the_window_are_excluded(memory: ChromaMemory) -> None:
    memory.add([rec("t1", n, f"Turn {n}: we talked about the garden fence.") for n in range(1, 7)])
    hits = memory.search("garden fence", thread_id="t1", user_id=None, k=10, exclude_turns_from=4)
    assert sorted(h.record.turn for h in hits) == [1, 2, 3]


def test_same_and_near_same_texts_are_returned_once(memory: ChromaMemory) -> None:
    memory.add(
        [
            rec("t1", 1, "My email is alice@example.com"),
            rec("t1", 2, "my email is alice@example.com!"),
            rec("t1", 3, "My email is alice@example.com", role="assistant"),
            rec("t1", 4, "I changed my email to alice@work.example"),
        ]
    )
    hits = memory.search("what is my email", thread_id="t1", user_id=None, k=10)
    assert len(hits) == 2
    assert "alice@work.example" in " ".join(texts(hits))


def test_score_floor_drops_weak_hits(memory: ChromaMemory) -> None:
    memory.add(
        [
            rec("t1", 1, "The quarterly budget review is on Friday."),
            rec("t1", 2, "Zebras have black and white stripes."),
        ]
    )
    everything = memory.search("quarterly budget review", thread_id="t1", user_id=None, k=5)
    assert len(everything) == 2
    floor = (everything[0].score + everything[1].score) / 2
    kept = memory.search(
        "quarterly budget review", thread_id="t1", user_id=None, k=5, min_score=floor
    )
    assert texts(kept) == ["The quarterly budget review is on Friday."]


def test_upsert_by_id_does_not_duplicate(memory: ChromaMemory) -> None:
    memory.add([rec("t1", 1, "first draft of the reply", role="assistant")])
    memory.add([rec("t1", 1, "final reply after a retry", role="assistant")])
    assert memory.count(thread_id="t1") == 1
    hits = memory.search("reply", thread_id="t1", user_id=None, k=5)
    assert texts(hits) == ["final reply after a retry"]


def test_delete_cascades_only_that_thread_and_refuses_late_writes(memory: ChromaMemory) -> None:
    memory.add([rec("t1", 1, "thread one"), rec("t1", 2, "more of one"), rec("t2", 1, "two")])
    assert memory.delete_thread("t1") == 2
    assert memory.count(thread_id="t1") == 0
    assert memory.count(thread_id="t2") == 1
    assert memory.search("thread one", thread_id="t1", user_id=None, k=5) == []
    with pytest.raises(ThreadDeletedError, match="t1"):
        memory.add([rec("t1", 3, "a late write")])
    assert memory.count(thread_id="t1") == 0
    memory.add([rec("t2", 2, "other threads still accept writes")])
    assert memory.count(thread_id="t2") == 2


def test_clearing_a_thread_keeps_it_writable(memory: ChromaMemory) -> None:
    memory.add([rec("t1", 1, "before the reset"), rec("t2", 1, "another thread")])
    assert memory.clear_thread("t1") == 1
    memory.add([rec("t1", 1, "after the reset")])
    assert texts(memory.search("reset", thread_id="t1", user_id=None, k=5)) == ["after the reset"]
    assert memory.count(thread_id="t2") == 1


def test_data_and_tombstones_survive_reopening_the_folder(tmp_path: Path) -> None:
    first = ChromaMemory.persistent(tmp_path / "chroma", CharFrequencyEmbedder())
    first.add([rec("keep", 1, "The wifi password is hunter2."), rec("gone", 1, "forget me")])
    first.delete_thread("gone")

    reopened = ChromaMemory.persistent(tmp_path / "chroma", CharFrequencyEmbedder())
    hits = reopened.search("wifi password", thread_id="keep", user_id=None, k=3)
    assert texts(hits) == ["The wifi password is hunter2."]
    with pytest.raises(ThreadDeletedError):
        reopened.add([rec("gone", 2, "late")])


def test_reopening_with_another_embedding_dimension_is_refused(tmp_path: Path) -> None:
    ChromaMemory.persistent(tmp_path / "chroma", CharFrequencyEmbedder(64))
    with pytest.raises(ValueError, match="64-dimensional"):
        ChromaMemory.persistent(tmp_path / "chroma", CharFrequencyEmbedder(128))


def test_chinese_text_is_found_by_keywords_and_characters(memory: ChromaMemory) -> None:
    memory.add(
        [
            rec("zh", 1, "我的订单号是 A-20931,还没有发货。"),
            rec("zh", 2, "我周末喜欢去西湖边散步。"),
            rec("zh", 3, "明天上海会下雨吗?"),
            rec("zh", 4, "I prefer replies in English."),
        ]
    )
    hits = memory.search("订单什么时候发货", thread_id="zh", user_id=None, k=2)
    assert hits[0].record.text.startswith("我的订单号")
    hits = memory.search("西湖散步", thread_id="zh", user_id=None, k=1)
    assert texts(hits) == ["我周末喜欢去西湖边散步。"]


def test_remembered_turns_carry_their_date_for_temporal_questions(memory: ChromaMemory) -> None:
    memory.add(
        [
            rec("t1", 1, "I went to the dentist.", timestamp="2024-02-03T09:00:00"),
            rec("t1", 2, "I went to the bakery.", timestamp="2024-07-19T09:00:00"),
        ]
    )
    hits = memory.search("what did I do in July 2024", thread_id="t1", user_id=None, k=1)
    assert texts(hits) == ["I went to the bakery."]
    assert stamp_text("hi", "2024-07-19T09:00:00") == "[19 July 2024] hi"
    assert stamp_text("hi", None) == "hi"


def test_concurrent_adds_are_all_searchable(memory: ChromaMemory) -> None:
    def write(worker: int) -> None:
        memory.add([rec("t1", worker * 10 + n, f"note {worker}-{n} about kiwis") for n in range(5)])

    workers = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert memory.count(thread_id="t1") == 20
    hits = memory.search("note 3-4 about kiwis", thread_id="t1", user_id=None, k=1)
    assert texts(hits) == ["note 3-4 about kiwis"]


def test_bad_input_gets_clear_errors(memory: ChromaMemory) -> None:
    with pytest.raises(ValueError, match="no text"):
        memory.add([rec("t1", 1, "   ")])
    with pytest.raises(ValueError, match="unique"):
        memory.add([rec("t1", 1, "a"), rec("t1", 1, "b")])
    with pytest.raises(ValueError, match="ISO-8601"):
        memory.add([rec("t1", 1, "a", timestamp="yesterday")])
    with pytest.raises(ValueError, match="reserved"):
        memory.add(
            [
                MemoryRecord(
                    id="x",
                    text="a",
                    thread_id="t",
                    user_id="u",
                    turn=1,
                    role="user",
                    extra={"turn": 3},
                )
            ]
        )
    with pytest.raises(ValueError, match="thread_id or a user_id"):
        memory.search("a", thread_id=None, user_id=None, k=1)
    with pytest.raises(ValueError, match="pass thread_id"):
        memory.search("a", thread_id=None, user_id="u", k=1, exclude_turns_from=3)
    with pytest.raises(ValueError, match="neighbours"):
        memory.search("a", thread_id="t1", user_id=None, k=1, neighbours=-1)
    with pytest.raises(ValueError, match="http://host:port"):
        ChromaMemory.from_url("localhost:8000", CharFrequencyEmbedder())
    assert memory.search("   ", thread_id="t1", user_id=None, k=3) == []
    assert memory.count() == 0


def test_tokenizer_stems_english_and_splits_chinese_into_bigrams() -> None:
    assert terms("She was painting sunsets at the lake's edge") == [
        "paint",
        "sunset",
        "lake",
        "edg",
    ]
    assert terms("北京烤鸭") == ["北京", "京烤", "烤鸭"]
    assert terms("订单 B-20931") == ["订单", "b", "20931"]


def test_bm25_score_is_normalized_and_rewards_rare_terms() -> None:
    docs = [tokenize_doc(t) for t in ["the cat sat", "the dog sat", "a cat and a dog"]]
    scores = BM25Scorer(docs).scores(terms("dog"))
    assert scores[0] == 0.0
    assert all(0.0 <= s < 1.0 for s in scores)
    assert scores[1] > 0 and scores[2] > 0


def test_neighbours_bring_the_reply_that_followed_a_recalled_turn(memory: ChromaMemory) -> None:
    memory.add(
        [
            rec("t1", 1, "Which train goes to the airport?"),
            rec("t1", 1, "Take line S9 from platform 4.", role="assistant"),
            rec("t1", 2, "Thanks, and how much is a ticket?"),
            rec("t1", 2, "About 4 euros one way.", role="assistant"),
            rec("t1", 3, "Where can I buy one?"),
        ]
    )
    hits = memory.search(
        "airport train", thread_id="t1", user_id=None, k=1, neighbours=1, exclude_turns_from=3
    )
    assert [h.record.id for h in hits] == ["t1:1:user", "t1:1:assistant"]
    assert hits[1].record.extra["neighbour_of"] == "t1:1:user"
    assert hits[1].score == hits[0].score
    # A neighbour never reaches into the excluded window turns.
    hits = memory.search(
        "ticket price", thread_id="t1", user_id=None, k=1, neighbours=3, exclude_turns_from=3
    )
    assert [h.record.turn for h in hits] == [2, 2]


class DeletingEmbedder(CharFrequencyEmbedder):
    """Deletes a thread while an add() is embedding: a delete racing with a write."""

    def __init__(self) -> None:
        super().__init__()
        self.memory: ChromaMemory | None = None

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        if self.memory is not None:
            memory, self.memory = self.memory, None
            memory.delete_thread("t1")
        return super().embed_documents(texts)


def test_a_delete_landing_during_a_write_wins() -> None:
    embedder = DeletingEmbedder()
    memory = ChromaMemory.ephemeral(embedder)
    memory.add([rec("t1", 1, "written before the delete"), rec("t2", 1, "another thread")])
    embedder.memory = memory
    with pytest.raises(ThreadDeletedError):
        memory.add([rec("t1", 2, "in flight when the thread is deleted")])
    assert memory.count(thread_id="t1") == 0
    assert memory.search("flight", thread_id="t1", user_id=None, k=5) == []
    assert memory.count(thread_id="t2") == 1


def test_delete_records_removes_only_those_ids() -> None:
    memory = ChromaMemory.ephemeral(CharFrequencyEmbedder())
    memory.add(
        [
            MemoryRecord(
                id="t:fact:email",
                text="email: a@example.com",
                thread_id="t",
                user_id="u",
                turn=1,
                role="fact",
            ),
            MemoryRecord(
                id="t:1:user",
                text="My email is a@example.com",
                thread_id="t",
                user_id="u",
                turn=1,
                role="user",
            ),
        ]
    )
    assert memory.delete_records(["t:fact:email", "t:fact:missing"]) == 1
    assert memory.count(thread_id="t") == 1
    assert memory.delete_records([]) == 0


def test_another_process_writes_and_deletions_reach_this_ones_searches() -> None:
    # Two stores over one Chroma collection stand for two API processes sharing a server:
    # each keeps its own keyword index, which must follow what the other one does.
    import chromadb
    from chromadb.config import Settings

    client = chromadb.EphemeralClient(settings=Settings(anonymized_telemetry=False))
    here = ChromaMemory(client, CharFrequencyEmbedder(), collection="shared_memory")
    there = ChromaMemory(client, CharFrequencyEmbedder(), collection="shared_memory")
    here.add([rec("t1", 1, "The boiler was serviced in April."), rec("t1", 2, "Lunch at noon.")])
    assert texts(here.search("boiler service", thread_id="t1", user_id=None, k=1)) == [
        "The boiler was serviced in April."
    ]

    there.add([rec("t1", 3, "The boiler code is E42 and the engineer is Tomasz.")])
    found = here.search("boiler engineer Tomasz", thread_id="t1", user_id=None, k=1)
    assert texts(found) == ["The boiler code is E42 and the engineer is Tomasz."]

    there.delete_records(["t1:3:user"])
    found = here.search("boiler engineer Tomasz", thread_id="t1", user_id=None, k=5)
    assert "E42" not in " ".join(texts(found))

    there.clear_thread("t1")
    assert here.search("boiler", thread_id="t1", user_id=None, k=5) == []
    there.add([rec("t1", 1, "After the reset: the boiler is new.")])
    assert texts(here.search("boiler", thread_id="t1", user_id=None, k=5)) == [
        "After the reset: the boiler is new."
    ]
    # Cross-thread recall (by user) follows the same writes and deletions.
    assert texts(here.search("boiler", thread_id=None, user_id="alice", k=5)) == [
        "After the reset: the boiler is new."
    ]
    there.delete_thread("t1")
    assert here.search("boiler", thread_id=None, user_id="alice", k=5) == []


class CountingEmbedder(CharFrequencyEmbedder):
    """Counts every text it embeds."""

    def __init__(self) -> None:
        super().__init__()
        self.embedded: list[str] = []

    def embed_query(self, text: str) -> list[float]:
        self.embedded.append(text)
        return super().embed_query(text)

    def embed_documents(self, texts: Sequence[str]) -> list[list[float]]:
        self.embedded.extend(texts)
        return [super(CountingEmbedder, self).embed_query(t) for t in texts]


def test_the_user_turn_searched_for_is_not_embedded_again_when_remembered() -> None:
    embedder = CountingEmbedder()
    memory = ChromaMemory.ephemeral(embedder)
    memory.add([rec("t1", 1, "I keep bees on the roof.")])
    question = "How many hives do you think fit on a roof?"
    memory.search(question, thread_id="t1", user_id=None, k=3)
    memory.add(
        [
            rec("t1", 2, question),
            rec("t1", 2, "About four, if the roof is flat.", role="assistant"),
        ]
    )
    assert embedder.embedded.count(question) == 1
    assert embedder.embedded.count("About four, if the roof is flat.") == 1
    hits = memory.search("hives on the roof", thread_id="t1", user_id=None, k=3)
    assert question in texts(hits)


def test_a_search_reads_what_changed_not_the_whole_thread(memory: ChromaMemory) -> None:
    memory.add(
        [rec("t1", n, f"Note {n} about the allotment and its {n} beds.") for n in range(300)]
    )
    memory.search("allotment beds", thread_id="t1", user_id=None, k=4)
    read: list[int] = []
    collection = memory._collection
    original = collection.get

    def counting_get(*args: Any, **kwargs: Any) -> Any:
        got = original(*args, **kwargs)
        read.append(len(got["ids"]))
        return got

    collection.get = counting_get  # type: ignore[method-assign]
    memory.add([rec("t1", 300, "Note 300: the allotment gets a shed.")])
    hits = memory.search("allotment shed", thread_id="t1", user_id=None, k=4)
    assert hits[0].record.text == "Note 300: the allotment gets a shed."
    # The new record, and the embeddings of at most the keyword candidates (64): never the
    # thread's 301 records.
    assert read[0] == 1
    assert sum(read) <= 1 + 64


def test_keyword_index_scores_as_bm25_over_the_same_documents() -> None:
    from store.lexical import KeywordIndex

    corpus = {
        "a": "the cat sat on the mat",
        "b": "the dog sat",
        "c": "a cat and a dog and a cat",
        "d": "zebras graze",
    }
    index = KeywordIndex()
    for doc_id, text in corpus.items():
        index.put(doc_id, tokenize_doc(text))
    index.put("d", tokenize_doc("zebras and cats graze"))  # replaced, not added
    corpus["d"] = "zebras and cats graze"
    query = terms("cat dog zebra")
    for left_out in ((), ("b",), ("a", "d")):
        kept = [d for d in corpus if d not in left_out]
        expected = BM25Scorer([tokenize_doc(corpus[d]) for d in kept]).scores(query)
        got = index.scores(query, exclude=left_out)
        for doc_id, score in zip(kept, expected, strict=True):
            assert got.get(doc_id, 0.0) == pytest.approx(score)
    index.remove("c")
    assert "c" not in index.scores(query)
    assert len(index) == 3


def test_neighbours_before_bring_what_a_recalled_reply_answered(memory: ChromaMemory) -> None:
    memory.add(
        [
            rec("t1", 1, "Which platform for the S9?"),
            rec("t1", 1, "Platform four, at the far end.", role="assistant"),
            rec("t1", 2, "Thanks a lot."),
        ]
    )
    hits = memory.search(
        "platform four far end", thread_id="t1", user_id=None, k=1, neighbours_before=1
    )
    assert [h.record.id for h in hits] == ["t1:1:assistant", "t1:1:user"]
    assert hits[1].record.extra["neighbour_of"] == "t1:1:assistant"
