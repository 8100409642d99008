"""The continuous-batching engine under the chat model: overlap, greedy parity, reuse, stops."""

from __future__ import annotations

import threading
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from graph.chat_model import QwenChatModel

PROMPTS = [
    "My order number is 4471 and it has not arrived yet.",
    "What is the weather like where you are today?",
    "Please help me reset the password of my account.",
    "Tell me a short story about a ticket and a refund.",
]
GREEDY: dict[str, Any] = {"profile": "precise", "max_new_tokens": 24}


def _serial(model: QwenChatModel) -> QwenChatModel:
    return QwenChatModel(llm=model.llm, max_tokens=model.max_tokens, engine="serial")


def _concurrently(model: QwenChatModel, prompts: list[Any], **kwargs: Any) -> list[AIMessage]:
    replies: list[AIMessage | None] = [None] * len(prompts)
    start = threading.Barrier(len(prompts))

    def run(i: int) -> None:
        start.wait()
        replies[i] = model.invoke(prompts[i], **kwargs)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(reply is not None for reply in replies)
    return [reply for reply in replies if reply is not None]


def test_concurrent_calls_decode_together_in_the_engine(tiny_chat_model: QwenChatModel) -> None:
    engine = tiny_chat_model.batched_engine()
    assert engine is not None
    before = len(engine.lifespans)
    _concurrently(tiny_chat_model, PROMPTS, max_new_tokens=24, profile="general")
    spans = list(engine.lifespans)[before:]
    assert len(spans) == len(PROMPTS)
    # Every request was being computed while every other one was: one batch, not a queue.
    assert max(start for start, _ in spans) < min(end for _, end in spans)


def test_greedy_output_is_the_same_with_and_without_batching(
    tiny_chat_model: QwenChatModel,
) -> None:
    serial = _serial(tiny_chat_model)
    expected = [serial.invoke(prompt, **GREEDY) for prompt in PROMPTS]
    batched = _concurrently(tiny_chat_model, PROMPTS, **GREEDY)
    assert [r.content for r in batched] == [r.content for r in expected]
    for got, want in zip(batched, expected, strict=True):
        assert got.usage_metadata is not None and want.usage_metadata is not None
        assert got.usage_metadata["output_tokens"] == want.usage_metadata["output_tokens"]
        assert got.response_metadata["finish_reason"] == want.response_metadata["finish_reason"]


def test_a_prompt_extending_the_last_reuses_its_kv_and_decodes_the_same(
    tiny_chat_model: QwenChatModel,
) -> None:
    serial = _serial(tiny_chat_model)
    history: list[BaseMessage] = [
        SystemMessage(content="You are a careful assistant. " * 20),
        HumanMessage(content=PROMPTS[0]),
    ]
    first = tiny_chat_model.invoke(history, **GREEDY)
    history += [AIMessage(content=first.content), HumanMessage(content=PROMPTS[1])]
    second = tiny_chat_model.invoke(history, **GREEDY)
    assert second.usage_metadata is not None
    cached = second.usage_metadata["input_token_details"]["cache_read"]
    assert 0 < cached < second.usage_metadata["input_tokens"]
    assert second.content == serial.invoke(history, **GREEDY).content


def test_stop_sequences_end_the_batched_reply_where_the_serial_one_ends(
    tiny_chat_model: QwenChatModel,
) -> None:
    serial = _serial(tiny_chat_model)
    full = str(serial.invoke(PROMPTS[2], **GREEDY).content)
    assert len(full) > 6
    stop = full[3:6]
    want = serial.invoke(PROMPTS[2], stop=[stop], **GREEDY)
    got = tiny_chat_model.invoke(PROMPTS[2], stop=[stop], **GREEDY)
    assert got.content == want.content == full[: full.find(stop)]
    assert got.usage_metadata is not None and want.usage_metadata is not None
    assert got.usage_metadata["output_tokens"] == want.usage_metadata["output_tokens"]


def test_a_closed_stream_cancels_its_request_in_the_engine(
    tiny_chat_model: QwenChatModel,
) -> None:
    engine = tiny_chat_model.batched_engine()
    assert engine is not None
    stream = tiny_chat_model.stream(PROMPTS[3], max_new_tokens=400, profile="general")
    next(stream)
    stream.close()
    deadline = threading.Event()
    for _ in range(100):
        if not engine._requests:
            break
        deadline.wait(0.05)
    assert not engine._requests


def test_seeded_calls_take_the_serialised_path_and_repeat(
    tiny_chat_model: QwenChatModel,
) -> None:
    engine = tiny_chat_model.batched_engine()
    assert engine is not None
    started = engine.requests_started
    kwargs: dict[str, Any] = {"max_new_tokens": 16, "temperature": 1.0}
    first = tiny_chat_model.invoke(PROMPTS[0], seed=11, **kwargs)
    again = tiny_chat_model.invoke(PROMPTS[0], seed=11, **kwargs)
    assert first.content == again.content
    assert engine.requests_started == started


def test_the_serial_setting_never_starts_the_engine(tiny_chat_model: QwenChatModel) -> None:
    model = QwenChatModel(llm=tiny_chat_model.llm, engine="serial")
    assert model.batched_engine() is None
    reply = model.invoke(PROMPTS[0], **GREEDY)
    assert reply.usage_metadata is not None
    assert reply.usage_metadata["input_token_details"]["cache_read"] == 0
