"""QwenChatModel over the tiny model: prompts, streaming, stops, seeds, usage, threads, async."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from graph.chat_model import QwenChatModel, StopSequenceFilter
from graph.loading import load_chat_model
from graph.settings import Settings
from graph.tiny_model import is_complete_model_dir
from nodes.text import ThinkStripper


@dataclass
class Script:
    """What a scripted generation saw: the prompt ids and how many forward passes ran."""

    prompt_ids: list[int] = field(default_factory=list)
    steps: int = 0


@contextmanager
def forced(
    model: QwenChatModel,
    text: str,
    *,
    end: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> Iterator[Script]:
    """Make the real model emit ``text``'s tokens (then ``<|im_end|>`` when ``end``).

    A forward hook keeps only the scripted token's logit, so the real generate() loop,
    stopping criteria and decoding all run; past the script the last token repeats. The hook
    counts forward passes, so the model takes the serialised path meanwhile (the engine's
    packed batches are covered by tests/unit/test_engine.py).
    """
    tokenizer = model.tokenizer
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if end:
        ids = [*ids, tokenizer.eos_token_id]
    record = Script()

    def hook(module: Any, args: Any, kwargs: dict[str, Any], output: Any) -> Any:
        step = record.steps
        record.steps += 1
        if step == 0:
            record.prompt_ids = kwargs["input_ids"][0].tolist()
        if on_step is not None:
            on_step(step)
        logits = output.logits
        logits[:, -1, :] = float("-inf")
        logits[:, -1, ids[min(step, len(ids) - 1)]] = 0.0
        return output

    handle = model.llm.pipeline.model.register_forward_hook(hook, with_kwargs=True)
    engine, model.engine = model.engine, "serial"
    try:
        yield record
    finally:
        model.engine = engine
        handle.remove()


def _template_ids(model: QwenChatModel, messages: list[dict[str, str]], **extra: Any) -> list[int]:
    encoded = model.tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=True, **extra
    )
    return list(encoded["input_ids"])


def _ids(model: QwenChatModel, text: str) -> list[int]:
    return model.tokenizer(text, add_special_tokens=False)["input_ids"]


# ------------------------------------------------------------------ prompts


def test_prompt_is_exactly_the_chat_template(tiny_chat_model: QwenChatModel) -> None:
    messages = [
        SystemMessage("You are terse."),
        HumanMessage("My order is 42."),
        AIMessage("Noted."),
        SystemMessage("Reply in English."),
        HumanMessage("你好, which order?"),
    ]
    expected = _template_ids(
        tiny_chat_model,
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "My order is 42."},
            {"role": "assistant", "content": "Noted."},
            {"role": "system", "content": "Reply in English."},
            {"role": "user", "content": "你好, which order?"},
        ],
    )
    with forced(tiny_chat_model, "ok") as script:
        reply = tiny_chat_model.invoke(messages)
    assert script.prompt_ids == expected
    assert reply.usage_metadata is not None
    assert reply.usage_metadata["input_tokens"] == len(expected)
    assert tiny_chat_model.get_num_tokens_from_messages(messages) == len(expected)


def test_enable_thinking_reaches_the_template(tiny_chat_model: QwenChatModel) -> None:
    with forced(tiny_chat_model, "ok") as script:
        tiny_chat_model.invoke("hi", enable_thinking=False)
    prompt = tiny_chat_model.tokenizer.decode(script.prompt_ids)
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    with forced(tiny_chat_model, "ok") as script:
        tiny_chat_model.invoke("hi")
    assert tiny_chat_model.tokenizer.decode(script.prompt_ids).endswith("assistant\n")


def test_trailing_ai_message_is_accepted_by_this_template(tiny_chat_model: QwenChatModel) -> None:
    with forced(tiny_chat_model, "more") as script:
        reply = tiny_chat_model.invoke([HumanMessage("hi"), AIMessage("hello")])
    assert reply.content == "more"
    assert tiny_chat_model.tokenizer.decode(script.prompt_ids).endswith(
        "hello<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([], "at least one message"),
        (
            [HumanMessage(content=[{"type": "image_url", "image_url": {"url": "http://x"}}])],
            "text content only",
        ),
        (
            [AIMessage("", invalid_tool_calls=[{"name": "f", "args": "{", "id": "1"}])],
            "invalid tool calls",
        ),
    ],
)
def test_unsupported_messages_raise_value_error(
    tiny_chat_model: QwenChatModel, messages: list, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        tiny_chat_model.invoke(messages)


def test_tool_calls_and_results_render_through_the_template(
    tiny_chat_model: QwenChatModel,
) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    messages = [
        HumanMessage("Where is order 7?"),
        AIMessage("", tool_calls=[{"name": "lookup", "args": {"order": 7}, "id": "c1"}]),
        ToolMessage("shipped", tool_call_id="c1"),
    ]
    with forced(tiny_chat_model, "done") as script:
        reply = tiny_chat_model.invoke(messages, tools=tools)
    assert reply.content == "done"
    prompt = tiny_chat_model.tokenizer.decode(script.prompt_ids)
    assert '<tools>\n{"type": "function", "function": {"name": "lookup"' in prompt
    assert '<tool_call>\n{"name": "lookup", "arguments": {"order": 7}}\n</tool_call>' in prompt
    assert "<|im_start|>user\n<tool_response>\nshipped\n</tool_response><|im_end|>" in prompt
    assert tiny_chat_model.get_num_tokens_from_messages(messages, tools=tools) == len(
        script.prompt_ids
    )


def test_text_blocks_are_joined(tiny_chat_model: QwenChatModel) -> None:
    block_message = HumanMessage(
        content=[{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    )
    assert tiny_chat_model.get_num_tokens_from_messages(
        [block_message]
    ) == tiny_chat_model.get_num_tokens_from_messages([HumanMessage("ab")])


def test_a_lone_surrogate_in_client_text_does_not_crash(tiny_chat_model: QwenChatModel) -> None:
    # JSON may carry "\ud800"; the tokenizer refuses such a str with a TypeError (a 500).
    text = "my name is x\ud800y"
    assert tiny_chat_model.get_num_tokens(text) == tiny_chat_model.get_num_tokens(
        "my name is x\ufffdy"
    )
    reply = tiny_chat_model.invoke([HumanMessage(text)], max_new_tokens=2)
    assert reply.usage_metadata is not None
    assert reply.usage_metadata["input_tokens"] == tiny_chat_model.get_num_tokens_from_messages(
        [HumanMessage(text)]
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"beams": 3}, "unsupported argument"),
        ({"profile": "chatty"}, "unknown profile"),
        ({"temperature": -1}, "temperature must be"),
        ({"top_p": 2}, "top_p must be"),
        ({"seed": "x"}, "seed must be an integer"),
        ({"cancel_event": True}, "cancel_event must be a threading.Event"),
        ({"model": "other-model"}, "cannot switch"),
    ],
)
def test_bad_call_arguments_raise_value_error(
    tiny_chat_model: QwenChatModel, kwargs: dict, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        tiny_chat_model.invoke("hi", **kwargs)


def test_token_counting_uses_the_model_tokenizer(tiny_chat_model: QwenChatModel) -> None:
    text = "Order 12345 订单"
    assert tiny_chat_model.get_token_ids(text) == _ids(tiny_chat_model, text)
    assert tiny_chat_model.get_num_tokens(text) == len(_ids(tiny_chat_model, text))
    assert tiny_chat_model.context_window == 8192
    assert tiny_chat_model.model_name == "tiny"


def test_context_window_is_capped_by_the_model_and_enforced(
    tiny_chat_model: QwenChatModel,
) -> None:
    wide = QwenChatModel(pipeline=tiny_chat_model.llm.pipeline, context_window=10**6)
    assert wide.context_window == 8192
    assert wide.get_num_tokens("hello") == tiny_chat_model.get_num_tokens("hello")
    narrow = QwenChatModel(llm=tiny_chat_model.llm, context_window=20)
    with pytest.raises(ValueError, match="context window is 20"):
        narrow.invoke("word " * 30)
    with forced(narrow, "a b c d e f g h i j k l m n o p q r s t u v w", end=False):
        reply = narrow.invoke("hi", max_new_tokens=100)
    prompt_tokens = narrow.get_num_tokens_from_messages([HumanMessage("hi")])
    assert reply.usage_metadata is not None
    assert reply.usage_metadata["output_tokens"] == 20 - prompt_tokens
    assert reply.response_metadata["finish_reason"] == "length"


# ------------------------------------------------------------------ think stripping


def test_think_stripper_handles_tags_split_anywhere() -> None:
    raw = "Sure<think>secret plan</think>\n\nHello <b> there<think>never closed"
    for size in (1, 2, 3, 7):
        stripper = ThinkStripper()
        pieces = [stripper.feed(raw[i : i + size]) for i in range(0, len(raw), size)]
        pieces.append(stripper.finish())
        assert "".join(pieces) == "SureHello <b> there"
        # "<" could open a think tag, so it is never emitted until the next piece decides.
        assert not any(piece.endswith("<") for piece in pieces)


def test_think_stripper_starting_inside_a_block() -> None:
    stripper = ThinkStripper(in_think=True)
    assert stripper.feed("reasoning</th") == ""
    assert stripper.feed("ink>\n\nAnswer") == "Answer"
    assert stripper.finish() == ""


def test_think_blocks_are_stripped_when_invoking(tiny_chat_model: QwenChatModel) -> None:
    with forced(tiny_chat_model, "<think>plan the reply</think>\n\nHello there"):
        reply = tiny_chat_model.invoke("hi")
    assert reply.content == "Hello there"
    with forced(tiny_chat_model, "Partial answer<think>still thinking"):
        reply = tiny_chat_model.invoke("hi")
    assert reply.content == "Partial answer"


def test_think_blocks_are_stripped_when_streaming(tiny_chat_model: QwenChatModel) -> None:
    with forced(tiny_chat_model, "<think>plan the reply</think>\n\nHello there, friend"):
        chunks = [chunk.content for chunk in tiny_chat_model.stream("hi")]
    assert "".join(chunks) == "Hello there, friend"
    assert not any("think" in chunk or "plan" in chunk for chunk in chunks)
    assert len([c for c in chunks if c]) > 1


def test_thinking_kept_when_stripping_is_off(tiny_chat_model: QwenChatModel) -> None:
    keeper = QwenChatModel(llm=tiny_chat_model.llm, strip_thinking=False)
    with forced(keeper, "<think>plan</think>\n\nHi"):
        assert keeper.invoke("hi").content == "<think>plan</think>\n\nHi"


# ------------------------------------------------------------------ stop sequences


def test_stop_filter_holds_back_possible_prefixes() -> None:
    stop = StopSequenceFilter(["o thr", "END"])
    assert stop.feed("one tw") == "one tw"
    assert stop.feed("o") == ""
    assert stop.feed(" t") == ""
    assert stop.feed("hree") == ""
    assert stop.stopped
    assert stop.finish() == ""
    other = StopSequenceFilter(["END"])
    assert other.feed("the EN") == "the "
    assert other.feed("GINE") == "ENGIN"  # the final E could still start END
    assert other.finish() == "E"


def _tokens_until(model: QwenChatModel, text: str, stop: str) -> int:
    ids = _ids(model, text)
    for count in range(1, len(ids) + 1):
        if stop in model.tokenizer.decode(ids[:count]):
            return count
    raise AssertionError("stop never completes")


def test_stop_sequence_without_streaming(tiny_chat_model: QwenChatModel) -> None:
    text = "alpha beta gamma delta epsilon"
    with forced(tiny_chat_model, text):
        reply = tiny_chat_model.invoke("hi", stop=["gamma"])
    assert reply.content == "alpha beta "
    assert reply.response_metadata["finish_reason"] == "stop"
    assert reply.usage_metadata is not None
    # Generation ended at the token that completed the stop sequence, not at the script's end.
    assert reply.usage_metadata["output_tokens"] == _tokens_until(tiny_chat_model, text, "gamma")


def test_stop_sequence_split_across_streamed_tokens(tiny_chat_model: QwenChatModel) -> None:
    text = "one two three four"
    with forced(tiny_chat_model, text):
        chunks = list(tiny_chat_model.stream("hi", stop=["o thr"]))
    contents = [chunk.content for chunk in chunks]
    assert "".join(contents) == "one tw"
    last = chunks[-1]
    assert last.usage_metadata is not None
    assert last.usage_metadata["output_tokens"] == _tokens_until(tiny_chat_model, text, "o thr")
    assert last.response_metadata["finish_reason"] == "stop"


def test_instance_stop_applies_and_call_stop_overrides(tiny_chat_model: QwenChatModel) -> None:
    model = QwenChatModel(llm=tiny_chat_model.llm, stop=["beta"])
    with forced(model, "alpha beta gamma"):
        assert model.invoke("hi").content == "alpha "
    with forced(model, "alpha beta gamma"):
        assert model.invoke("hi", stop=["gamma"]).content == "alpha beta "


# ------------------------------------------------------------------ sampling


def test_greedy_is_deterministic_and_matches_argmax(tiny_chat_model: QwenChatModel) -> None:
    first = tiny_chat_model.invoke("Tell me about orders", temperature=0, max_new_tokens=12)
    second = tiny_chat_model.invoke("Tell me about orders", temperature=0, max_new_tokens=12)
    assert first.content == second.content
    hf_model = tiny_chat_model.llm.pipeline.model
    prompt = _template_ids(tiny_chat_model, [{"role": "user", "content": "Tell me about orders"}])
    output = hf_model.generate(input_ids=torch.tensor([prompt]), do_sample=False, max_new_tokens=12)
    expected = tiny_chat_model.tokenizer.decode(output[0, len(prompt) :], skip_special_tokens=True)
    assert first.content == expected
    precise = tiny_chat_model.bind(profile="precise", max_new_tokens=12)
    assert precise.invoke("Tell me about orders").content == first.content


def test_same_seed_same_text_other_seed_other_text(tiny_chat_model: QwenChatModel) -> None:
    kwargs = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "max_new_tokens": 16}
    first = tiny_chat_model.invoke("hello", seed=7, **kwargs).content
    again = tiny_chat_model.invoke("hello", seed=7, **kwargs).content
    streamed = "".join(c.content for c in tiny_chat_model.stream("hello", seed=7, **kwargs))
    other = tiny_chat_model.invoke("hello", seed=8, **kwargs).content
    assert first == again == streamed
    assert first != other


# ------------------------------------------------------------------ usage


def test_usage_counts_real_tokens(tiny_chat_model: QwenChatModel) -> None:
    prompt_ids = _template_ids(tiny_chat_model, [{"role": "user", "content": "count me"}])
    with forced(tiny_chat_model, "alpha beta") as script:
        reply = tiny_chat_model.invoke("count me")
    assert reply.content == "alpha beta"
    assert reply.usage_metadata == {
        "input_tokens": len(prompt_ids),
        "output_tokens": len(_ids(tiny_chat_model, "alpha beta")) + 1,  # + <|im_end|>
        "total_tokens": len(prompt_ids) + len(_ids(tiny_chat_model, "alpha beta")) + 1,
        "input_token_details": {"cache_read": 0},  # the serialised path reuses no KV
    }
    assert script.steps == reply.usage_metadata["output_tokens"]
    assert reply.response_metadata["finish_reason"] == "stop"
    assert reply.response_metadata["model_name"] == "tiny"


def test_length_finish_and_usage_on_the_last_streamed_chunk(
    tiny_chat_model: QwenChatModel,
) -> None:
    with forced(tiny_chat_model, "la " * 50, end=False):
        chunks = list(tiny_chat_model.stream("sing", max_new_tokens=5))
    assert [c.usage_metadata for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    last = chunks[-1]
    assert last.usage_metadata is not None
    assert last.usage_metadata["output_tokens"] == 5
    assert last.response_metadata["finish_reason"] == "length"


# ------------------------------------------------------------------ concurrency and cancel


def test_concurrent_invokes_each_get_their_own_answer(tiny_chat_model: QwenChatModel) -> None:
    prompts = [(f"question {i}", i) for i in range(6)]
    kwargs = {"temperature": 1.0, "top_k": 0, "max_new_tokens": 12}
    expected = {p: tiny_chat_model.invoke(p, seed=s, **kwargs).content for p, s in prompts}
    results: dict[str, str] = {}
    barrier = threading.Barrier(len(prompts))

    def call(prompt: str, seed: int) -> None:
        barrier.wait()
        results[prompt] = str(tiny_chat_model.invoke(prompt, seed=seed, **kwargs).content)

    threads = [threading.Thread(target=call, args=pair) for pair in prompts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == expected
    assert len(set(expected.values())) > 1


def test_cancel_event_stops_generation_at_the_next_token(tiny_chat_model: QwenChatModel) -> None:
    cancel = threading.Event()

    def on_step(step: int) -> None:
        if step == 2:
            cancel.set()

    with forced(tiny_chat_model, "la " * 50, end=False, on_step=on_step) as script:
        reply = tiny_chat_model.invoke("sing", max_new_tokens=40, cancel_event=cancel)
    assert script.steps == 3
    assert reply.usage_metadata is not None
    assert reply.usage_metadata["output_tokens"] == 3
    assert reply.response_metadata["cancelled"] is True
    with forced(tiny_chat_model, "la") as script:
        reply = tiny_chat_model.invoke("sing", cancel_event=cancel)
    assert script.steps == 0
    assert reply.content == ""


def _wait_idle(model: QwenChatModel) -> None:
    # The generation thread holds the lock until generate() has returned.
    with model._generate_lock:
        pass


def test_closing_a_stream_early_stops_generation(tiny_chat_model: QwenChatModel) -> None:
    closed = threading.Event()

    def on_step(step: int) -> None:
        if step == 3:
            closed.wait(timeout=10)

    with forced(tiny_chat_model, "la " * 50, end=False, on_step=on_step) as script:
        stream = tiny_chat_model.stream("sing", max_new_tokens=40)
        next(iter(stream))
        stream.close()
        closed.set()
        _wait_idle(tiny_chat_model)
    assert script.steps <= 5


# ------------------------------------------------------------------ async


async def test_async_stream_keeps_the_event_loop_free(tiny_chat_model: QwenChatModel) -> None:
    loop_ran = threading.Event()
    waiting = threading.Event()
    answered: list[bool] = []

    def on_step(step: int) -> None:
        if step == 2:
            waiting.set()
            # Only a coroutine on the event loop can release this: if generation ran on the
            # loop's thread, nothing could, and the wait would time out.
            answered.append(loop_ran.wait(timeout=10))

    async def ticker() -> None:
        while True:
            if waiting.is_set():
                loop_ran.set()
            await asyncio.sleep(0.001)

    tick_task = asyncio.create_task(ticker())
    text = "one two three four five six seven eight"
    with forced(tiny_chat_model, text, on_step=on_step):
        chunks = [c async for c in tiny_chat_model.astream("count", max_new_tokens=40)]
    tick_task.cancel()
    assert answered == [True]
    assert "".join(str(c.content) for c in chunks) == text
    assert len([c for c in chunks if c.content]) > 3
    assert chunks[-1].usage_metadata is not None


async def test_ainvoke_runs_off_the_loop_and_reports_usage(
    tiny_chat_model: QwenChatModel,
) -> None:
    loop_ran = threading.Event()
    answered: list[bool] = []

    def on_step(step: int) -> None:
        if step == 1:
            answered.append(loop_ran.wait(timeout=10))

    async def poke() -> None:
        await asyncio.sleep(0.01)
        loop_ran.set()

    with forced(tiny_chat_model, "alpha beta", on_step=on_step):
        reply, _ = await asyncio.gather(tiny_chat_model.ainvoke("hi", stop=["beta"]), poke())
    assert answered == [True]
    assert reply.content == "alpha "
    assert reply.usage_metadata is not None
    assert reply.response_metadata["finish_reason"] == "stop"


async def test_closing_an_async_stream_early_stops_generation(
    tiny_chat_model: QwenChatModel,
) -> None:
    closed = threading.Event()

    def on_step(step: int) -> None:
        if step == 3:
            closed.wait(timeout=10)

    with forced(tiny_chat_model, "la " * 50, end=False, on_step=on_step) as script:
        stream = tiny_chat_model.astream("sing", max_new_tokens=40)
        await anext(stream)
        await stream.aclose()
        closed.set()
        await asyncio.to_thread(_wait_idle, tiny_chat_model)
    assert script.steps <= 5


async def test_async_cancellation_stops_generation(tiny_chat_model: QwenChatModel) -> None:
    started = threading.Event()
    release = threading.Event()

    def on_step(step: int) -> None:
        if step == 2:
            started.set()
            release.wait(timeout=10)

    with forced(tiny_chat_model, "la " * 50, end=False, on_step=on_step) as script:
        task = asyncio.create_task(tiny_chat_model.ainvoke("sing", max_new_tokens=40))
        await asyncio.to_thread(started.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        await asyncio.to_thread(_wait_idle, tiny_chat_model)
    assert script.steps <= 4


def test_tools_and_structured_output_are_refused(tiny_chat_model: QwenChatModel) -> None:
    with pytest.raises(NotImplementedError, match="tool calling"):
        tiny_chat_model.bind_tools([])
    with pytest.raises(NotImplementedError, match="structured output"):
        tiny_chat_model.with_structured_output({"type": "object"})


# ------------------------------------------------------------------ loading from settings


def test_load_chat_model_applies_the_settings(tiny_settings: Settings) -> None:
    settings = tiny_settings.model_copy(
        update={"context_window": 1024, "max_new_tokens": 5, "default_profile": "precise"}
    )
    model = load_chat_model(settings)
    assert model.model_name == "tiny"
    assert model.context_window == 1024
    first = model.invoke("hello")
    assert first.usage_metadata is not None
    assert first.usage_metadata["output_tokens"] <= 5
    assert model.invoke("hello").content == first.content  # precise is greedy


def test_tiny_model_is_built_on_first_use(isolated_data_dir: Path) -> None:
    settings = Settings(model="tiny", data_dir=isolated_data_dir)
    assert not settings.tiny_model_dir().exists()
    model = load_chat_model(settings)
    assert is_complete_model_dir(settings.tiny_model_dir())
    assert model.get_num_tokens("hello") > 0


@pytest.mark.parametrize(
    ("update", "match"),
    [
        ({"load_in_4bit": True}, "load_in_4bit needs a CUDA GPU"),
        ({"device": "cuda"}, "CUDA is not available"),
        ({"model": "./no/such/folder"}, "does not exist"),
    ],
)
def test_loading_refuses_what_this_machine_cannot_do(
    tiny_settings: Settings, monkeypatch: pytest.MonkeyPatch, update: dict, match: str
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=match):
        load_chat_model(tiny_settings.model_copy(update=update))
