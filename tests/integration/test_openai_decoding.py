"""Tools, structured output, logprobs, penalties and logit bias on the real tiny model over /v1."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from api.app import create_app
from graph.chat_model import QwenChatModel
from graph.compose import open_service
from graph.settings import Settings
from store.embeddings import load_embedder
from store.vector_memory import ChromaMemory
from tests.unit.test_chat_model import forced

ORDER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "customer": {"type": "string"},
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}},
                "required": ["sku", "qty"],
            },
        },
        "priority": {"enum": ["low", "high"]},
        "gift": {"type": "boolean"},
    },
    "required": ["customer", "items", "priority", "gift"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}
CLOCK = {"type": "function", "function": {"name": "get_time"}}
USER = [{"role": "user", "content": "What is the weather in Paris?"}]


def _settings(tmp_path: Path) -> Settings:
    return Settings(checkpointer_url="memory", data_dir=tmp_path, embedder="hash", model="tiny")


async def _client_for(model: QwenChatModel, tmp_path: Path) -> AsyncIterator[openai.AsyncOpenAI]:
    settings = _settings(tmp_path)
    memory = ChromaMemory.ephemeral(load_embedder("hash"))
    async with open_service(settings, chat_model=model, memory=memory) as service:
        app = create_app(service, settings=settings)
        transport = httpx.ASGITransport(app=app)
        async with openai.AsyncOpenAI(
            api_key="unused",
            base_url="http://steadychat.test/v1",
            http_client=httpx.AsyncClient(transport=transport, base_url="http://steadychat.test"),
            max_retries=0,
        ) as client:
            yield client


@pytest.fixture
async def client(
    tiny_chat_model: QwenChatModel, tmp_path: Path
) -> AsyncIterator[openai.AsyncOpenAI]:
    async for c in _client_for(tiny_chat_model, tmp_path):
        yield c


# -- tools ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2])
async def test_required_tool_choice_yields_a_valid_call_from_the_random_model(
    client: openai.AsyncOpenAI, seed: int
) -> None:
    response = await client.chat.completions.create(
        model="steadychat",
        messages=USER,  # type: ignore[arg-type]
        tools=[WEATHER, CLOCK],  # type: ignore[list-item]
        tool_choice="required",
        temperature=1.0,
        seed=seed,
        max_tokens=120,
    )
    [choice] = response.choices
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.id.startswith("call_") and call.type == "function"
    arguments = json.loads(call.function.arguments)
    if call.function.name == "get_weather":
        jsonschema.validate(arguments, WEATHER["function"]["parameters"])  # type: ignore[index]
    else:
        assert call.function.name == "get_time" and arguments == {}


async def test_a_named_function_is_the_one_called_also_streamed(
    client: openai.AsyncOpenAI,
) -> None:
    choice = {"type": "function", "function": {"name": "get_weather"}}
    stream = await client.chat.completions.create(
        model="steadychat",
        messages=USER,  # type: ignore[arg-type]
        tools=[CLOCK, WEATHER],  # type: ignore[list-item]
        tool_choice=choice,  # type: ignore[arg-type]
        max_tokens=100,
        stream=True,
    )
    chunks = [chunk async for chunk in stream]
    calls = [c for chunk in chunks for c in (chunk.choices[0].delta.tool_calls or [])]
    [call] = calls
    assert call.index == 0 and call.function is not None
    assert call.function.name == "get_weather"
    jsonschema.validate(
        json.loads(call.function.arguments or ""), WEATHER["function"]["parameters"]
    )  # type: ignore[index]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert not "".join(chunk.choices[0].delta.content or "" for chunk in chunks)


async def test_auto_parses_what_the_model_writes_and_keeps_its_text(
    client: openai.AsyncOpenAI, tiny_chat_model: QwenChatModel
) -> None:
    call = '{"name": "get_weather", "arguments": {"city": "Oslo", "days": 2}}'
    text = f"Let me look.\n<tool_call>\n{call}\n</tool_call>"
    for stream in (False, True):
        with forced(tiny_chat_model, text) as script:
            if stream:
                chunks = [
                    c
                    async for c in await client.chat.completions.create(
                        model="steadychat",
                        messages=USER,  # type: ignore[arg-type]
                        tools=[WEATHER],  # type: ignore[list-item]
                        max_tokens=200,
                        stream=True,
                    )
                ]
                content = "".join(c.choices[0].delta.content or "" for c in chunks)
                calls = [t for c in chunks for t in (c.choices[0].delta.tool_calls or [])]
                names = [(t.function.name, t.function.arguments) for t in calls if t.function]
                finish = chunks[-1].choices[0].finish_reason
            else:
                response = await client.chat.completions.create(
                    model="steadychat",
                    messages=USER,  # type: ignore[arg-type]
                    tools=[WEATHER],  # type: ignore[list-item]
                    max_tokens=200,
                )
                message = response.choices[0].message
                content = message.content or ""
                names = [(t.function.name, t.function.arguments) for t in message.tool_calls or []]
                finish = response.choices[0].finish_reason
        assert content.strip() == "Let me look."
        assert names == [("get_weather", '{"city": "Oslo", "days": 2}')]
        assert finish == "tool_calls"
        prompt = tiny_chat_model.tokenizer.decode(script.prompt_ids)
        assert '"name": "get_weather"' in prompt.split("<tools>\n")[1]


async def test_tool_results_go_back_through_the_template(
    client: openai.AsyncOpenAI, tiny_chat_model: QwenChatModel
) -> None:
    messages = [
        *USER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "arguments": '{"city": "Paris", "days": 1}',
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    with forced(tiny_chat_model, "It is sunny.") as script:
        response = await client.chat.completions.create(
            model="steadychat",
            messages=messages,  # type: ignore[arg-type]
            tools=[WEATHER],  # type: ignore[list-item]
        )
    assert response.choices[0].message.content == "It is sunny."
    assert response.choices[0].finish_reason == "stop"
    prompt = tiny_chat_model.tokenizer.decode(script.prompt_ids)
    assert (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 1}}' in prompt
    )
    assert "<tool_response>\nsunny, 21 C\n</tool_response>" in prompt
    assert response.usage is not None
    assert response.usage.prompt_tokens == len(script.prompt_ids)


async def test_a_template_without_tools_is_a_400_naming_tools(
    tiny_chat_model: QwenChatModel, tmp_path: Path
) -> None:
    tokenizer = copy.deepcopy(tiny_chat_model.tokenizer)
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    plain = QwenChatModel.from_model(tiny_chat_model.llm.pipeline.model, tokenizer, model_id="tiny")
    async for client in _client_for(plain, tmp_path):
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(
                model="steadychat",
                messages=USER,  # type: ignore[arg-type]
                tools=[WEATHER],  # type: ignore[list-item]
            )
        assert caught.value.param == "tools"
        assert "chat template" in caught.value.message
        # tool_choice "none" asks for no call: the tools need not be rendered.
        reply = await client.chat.completions.create(
            model="steadychat",
            messages=USER,  # type: ignore[arg-type]
            tools=[WEATHER],  # type: ignore[list-item]
            tool_choice="none",
            max_tokens=3,
        )
        assert reply.choices[0].message.tool_calls is None


async def test_tools_in_a_thread_are_a_400(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="steadychat",
            messages=USER,  # type: ignore[arg-type]
            tools=[WEATHER],  # type: ignore[list-item]
            extra_headers={"X-Thread-Id": "t-tools"},
        )
    assert caught.value.param == "tools"


# -- structured output ---------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_json_schema_is_valid_even_from_the_random_model(
    client: openai.AsyncOpenAI, stream: bool
) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "order", "schema": ORDER_SCHEMA}}
    for seed, max_tokens in ((3, 400), (4, 70)):
        kwargs: dict[str, Any] = {
            "model": "steadychat",
            "messages": [{"role": "user", "content": "Order two lamps for Ada."}],
            "response_format": fmt,
            "temperature": 1.0,
            "seed": seed,
            "max_tokens": max_tokens,
        }
        if stream:
            chunks = [c async for c in await client.chat.completions.create(stream=True, **kwargs)]
            text = "".join(c.choices[0].delta.content or "" for c in chunks)
        else:
            text = (await client.chat.completions.create(**kwargs)).choices[0].message.content or ""
        jsonschema.validate(json.loads(text), ORDER_SCHEMA)


async def test_a_budget_too_small_for_the_schema_is_a_400(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="steadychat",
            messages=USER,  # type: ignore[arg-type]
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "order", "schema": ORDER_SCHEMA},
            },
            max_tokens=10,
        )
    assert caught.value.param == "max_tokens"


async def test_json_object_from_the_random_model_is_an_object_stateless_and_in_a_thread(
    client: openai.AsyncOpenAI,
) -> None:
    for headers in ({}, {"X-Thread-Id": "t-json"}):
        response = await client.chat.completions.create(
            model="steadychat",
            messages=[{"role": "user", "content": "Reply in JSON."}],
            response_format={"type": "json_object"},
            temperature=1.0,
            seed=5,
            max_tokens=48,
            extra_headers=headers,
        )
        assert isinstance(json.loads(response.choices[0].message.content or ""), dict)


async def test_a_schema_xgrammar_rejects_is_a_400(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="steadychat",
            messages=USER,  # type: ignore[arg-type]
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "bad", "schema": {"$ref": "#/nowhere"}},
            },
        )
    assert caught.value.param == "response_format"


# -- logprobs, penalties, logit bias -------------------------------------------------------------


async def test_logprobs_stream_and_whole_agree_and_join_to_the_content(
    client: openai.AsyncOpenAI,
) -> None:
    kwargs: dict[str, Any] = {
        "model": "steadychat",
        "messages": USER,
        "temperature": 0,
        "max_tokens": 8,
        "logprobs": True,
        "top_logprobs": 3,
    }
    whole = await client.chat.completions.create(**kwargs)
    [choice] = whole.choices
    assert choice.logprobs is not None and choice.logprobs.content
    entries = choice.logprobs.content
    assert "".join(e.token for e in entries) == choice.message.content
    assert whole.usage is not None
    assert len(entries) in (whole.usage.completion_tokens, whole.usage.completion_tokens - 1)
    for entry in entries:
        assert len(entry.top_logprobs) == 3
        assert entry.logprob <= 0
        # Greedy: the chosen token is the most likely one.
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
        assert bytes(entry.bytes or []).decode("utf-8", errors="replace") == entry.token

    chunks = [c async for c in await client.chat.completions.create(stream=True, **kwargs)]
    streamed = [
        e
        for c in chunks
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content or []
    ]
    assert [(e.token, round(e.logprob, 4)) for e in streamed] == [
        (e.token, round(e.logprob, 4)) for e in entries
    ]


def _token_id(model: QwenChatModel, text: str) -> int:
    [token] = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    return int(token)


async def test_logit_bias_and_frequency_penalty_steer_the_tokens(
    client: openai.AsyncOpenAI, tiny_chat_model: QwenChatModel
) -> None:
    yes, no = _token_id(tiny_chat_model, " yes"), _token_id(tiny_chat_model, " no")
    base: dict[str, Any] = {
        "model": "steadychat",
        "messages": USER,
        "temperature": 0,
        "max_tokens": 6,
        # 3 logits apart: more than the random model's own preference between the two.
        "logit_bias": {str(yes): 62, str(no): 59},
        # The precise profile has no repetition penalty of its own (it scales logits).
        "extra_body": {"profile": "precise"},
    }
    biased = await client.chat.completions.create(**base)
    assert (biased.choices[0].message.content or "").split() == ["yes"] * 6
    # Presence costs a token once: " yes" stays ahead. Frequency costs it per occurrence.
    present = await client.chat.completions.create(presence_penalty=2.0, **base)
    assert (present.choices[0].message.content or "").split() == ["yes"] * 6
    frequent = await client.chat.completions.create(frequency_penalty=2.0, **base)
    words = (frequent.choices[0].message.content or "").split()
    assert words[0] == "yes" and "no" in words


def test_penalties_are_openais_additive_ones() -> None:
    import torch

    from graph.decoding import _PenaltyProcessor

    processor = _PenaltyProcessor(frequency=0.5, presence=1.0)
    prompt = torch.tensor([[3, 3, 3]])
    scores = torch.zeros(1, 5)
    assert torch.equal(processor(prompt, scores), scores)  # the prompt is not counted
    generated = torch.tensor([[3, 3, 3, 1, 2, 2]])
    assert processor(generated, scores).tolist() == [[0.0, -1.5, -2.0, 0.0, 0.0]]


async def test_a_logit_bias_on_an_unknown_token_is_a_400(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="steadychat",
            messages=USER,  # type: ignore[arg-type]
            logit_bias={"99999999": 5},
        )
    assert caught.value.param == "logit_bias"


async def test_logprobs_in_a_thread_are_a_400(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="steadychat",
            messages=USER,  # type: ignore[arg-type]
            logprobs=True,
            extra_headers={"X-Thread-Id": "t-logprobs"},
        )
    assert caught.value.param == "logprobs"
