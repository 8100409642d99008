"""The OpenAI-compatible API driven by the official openai client, in process."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGenerationChunk
from pydantic import PrivateAttr

from api.app import create_app
from graph.compose import open_service
from graph.service import ChatService
from graph.settings import Settings
from nodes.generate_reply import user_text_of
from store.embeddings import load_embedder
from store.vector_memory import ChromaMemory
from tests.fakes import ScriptedChatModel

KEY_A = "sk-tenant-a"
KEY_B = "sk-tenant-b"


def _open(settings: Settings, model: Any) -> AbstractAsyncContextManager[ChatService]:
    # Real Chroma, in memory, with the deterministic character-frequency embedder.
    memory = ChromaMemory.ephemeral(load_embedder("hash"))
    return open_service(settings, chat_model=model, memory=memory)


def _settings(tmp_path: Path, **overrides: Any) -> Settings:
    return Settings(
        checkpointer_url="memory",
        data_dir=tmp_path,
        embedder="hash",
        model="steadychat-test-model",
        **overrides,
    )


@pytest.fixture
def model() -> ScriptedChatModel:
    return ScriptedChatModel()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return _settings(tmp_path)


@pytest.fixture
async def service(settings: Settings, model: ScriptedChatModel) -> AsyncIterator[ChatService]:
    async with _open(settings, model) as svc:
        yield svc


@pytest.fixture
def app(service: ChatService, settings: Settings) -> FastAPI:
    return create_app(service, settings=settings)


def _client(app: FastAPI, key: str = "unused") -> openai.AsyncOpenAI:
    transport = httpx.ASGITransport(app=app)
    return openai.AsyncOpenAI(
        api_key=key,
        base_url="http://steadychat.test/v1",
        http_client=httpx.AsyncClient(transport=transport, base_url="http://steadychat.test"),
        max_retries=0,
    )


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[openai.AsyncOpenAI]:
    async with _client(app) as c:
        yield c


def _texts(messages: list[BaseMessage]) -> list[tuple[str, str]]:
    return [(m.type, str(m.content)) for m in messages]


def _generation_calls(model: ScriptedChatModel, marker: str) -> list[dict[str, Any]]:
    """The model calls whose last message is the user turn containing ``marker``."""
    return [
        call
        for call in model.history
        if isinstance(call["messages"][-1], HumanMessage)
        and marker in str(call["messages"][-1].content)
    ]


# -- stateless ---------------------------------------------------------------------------------


async def test_stateless_completion_maps_messages_and_parameters(
    client: openai.AsyncOpenAI, model: ScriptedChatModel
) -> None:
    model.enqueue("Your order number is 20240815CN001.")
    response = await client.chat.completions.create(
        model="steadychat",
        messages=[
            {"role": "system", "content": "You are a support engineer."},
            {"role": "developer", "content": "Answer briefly."},
            {"role": "user", "content": "My order is 20240815CN001."},
            {"role": "assistant", "content": "Noted."},
            {"role": "user", "content": [{"type": "text", "text": "What is my order number?"}]},
        ],
        temperature=0,
        top_p=0.5,
        seed=7,
        stop="END",
        max_tokens=32,
    )

    assert response.object == "chat.completion"
    assert response.id.startswith("chatcmpl-")
    assert response.model == "steadychat-test-model"
    [choice] = response.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == "Your order number is 20240815CN001."
    assert choice.finish_reason == "stop"
    assert choice.logprobs is None
    assert getattr(response, "steadychat", None) is None

    [call] = model.history
    sent = call["messages"]
    assert _texts(sent) == [
        ("system", "You are a support engineer.\n\nAnswer briefly."),
        ("human", "My order is 20240815CN001."),
        ("ai", "Noted."),
        ("human", "What is my order number?"),
    ]
    kwargs = call["kwargs"]
    assert kwargs["temperature"] == 0
    assert kwargs["top_p"] == 0.5
    assert kwargs["seed"] == 7
    assert kwargs["stop"] == ["END"]
    assert kwargs["max_new_tokens"] == 32

    assert response.usage is not None
    assert response.usage.prompt_tokens == model.get_num_tokens_from_messages(sent)
    assert response.usage.completion_tokens == 5
    assert response.usage.total_tokens == response.usage.prompt_tokens + 5


async def test_max_completion_tokens_wins_over_max_tokens(
    client: openai.AsyncOpenAI, model: ScriptedChatModel
) -> None:
    await client.chat.completions.create(
        model="steadychat",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=100,
        max_completion_tokens=12,
    )
    assert model.history[0]["kwargs"]["max_new_tokens"] == 12


async def test_stream_reassembles_text_with_one_finish_reason(
    client: openai.AsyncOpenAI, model: ScriptedChatModel
) -> None:
    model.enqueue("The capital of France is Paris.")
    stream = await client.chat.completions.create(
        model="steadychat",
        messages=[{"role": "user", "content": "Capital of France?"}],
        stream=True,
    )
    chunks = [chunk async for chunk in stream]

    assert {chunk.id for chunk in chunks} == {chunks[0].id}
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == (
        "The capital of France is Paris."
    )
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(chunk.usage is None for chunk in chunks)


async def test_stream_usage_chunk_with_include_usage(
    client: openai.AsyncOpenAI, model: ScriptedChatModel
) -> None:
    model.enqueue("one two three")
    stream = await client.chat.completions.create(
        model="steadychat",
        messages=[{"role": "user", "content": "count"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]

    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == 3
    assert last.usage.prompt_tokens == model.get_num_tokens_from_messages(
        model.history[0]["messages"]
    )
    assert all(chunk.usage is None for chunk in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "stop"


# -- stateful (X-Thread-Id) ------------------------------------------------------------------


async def test_thread_header_remembers_across_calls(
    client: openai.AsyncOpenAI, model: ScriptedChatModel, service: ChatService
) -> None:
    headers = {"X-Thread-Id": "support-42"}
    model.responder = lambda messages: f"Reply to: {user_text_of(str(messages[-1].content))}"
    first = await client.chat.completions.create(
        model="steadychat",
        messages=[{"role": "user", "content": "My order number is 20240815CN001."}],
        extra_headers=headers,
    )
    # A client that keeps its own history sends it again; only the last user message counts.
    second = await client.chat.completions.create(
        model="steadychat",
        messages=[
            {"role": "user", "content": "An older message the thread must not take."},
            {"role": "assistant", "content": "An older reply."},
            {"role": "user", "content": "Which order did I mention?"},
        ],
        extra_headers=headers,
    )

    assert first.choices[0].message.content == "Reply to: My order number is 20240815CN001."
    [call] = _generation_calls(model, "Which order did I mention?")
    prompt = "\n".join(str(m.content) for m in call["messages"])
    assert "My order number is 20240815CN001." in prompt
    assert "Reply to: My order number is 20240815CN001." in prompt
    assert "An older message the thread must not take." not in prompt

    extension = second.model_extra["steadychat"]
    assert extension["thread_id"] == "support-42"
    assert extension["turn"] == 2
    assert extension["context_account"]["turn"] == 2
    assert first.model_extra["steadychat"]["turn"] == 1
    assert second.usage is not None and second.usage.prompt_tokens > 0

    view = await service.get_thread("support-42", owner="anonymous")
    assert view.info.turns == 2
    assert [m.content for m in view.window][-1] == "Reply to: Which order did I mention?"


async def test_user_field_names_whose_memory_the_turn_writes(
    client: openai.AsyncOpenAI, service: ChatService
) -> None:
    await client.chat.completions.create(
        model="steadychat",
        messages=[{"role": "user", "content": "My favourite colour is teal."}],
        user="alice",
        extra_headers={"X-Thread-Id": "alice-thread"},
    )
    assert service.memory is not None
    hits = service.memory.search("favourite colour", thread_id=None, user_id="alice", k=5)
    assert hits, "the exchange is remembered under the user named in the request"
    assert {hit.record.user_id for hit in hits} == {"alice"}
    assert service.memory.search("favourite colour", thread_id=None, user_id="bob", k=5) == []


async def test_profile_extension_and_its_validation(
    client: openai.AsyncOpenAI, model: ScriptedChatModel
) -> None:
    await client.chat.completions.create(
        model="steadychat",
        messages=[{"role": "user", "content": "hi"}],
        extra_body={"profile": "precise"},
    )
    assert model.history[0]["kwargs"]["profile"] == "precise"
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="steadychat",
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"profile": "x"},
        )
    assert caught.value.param == "profile"


async def test_thread_system_message_replaces_role_prompt(
    client: openai.AsyncOpenAI, model: ScriptedChatModel
) -> None:
    await client.chat.completions.create(
        model="steadychat",
        messages=[
            {"role": "system", "content": "You are Captain Pirate, a ship's assistant."},
            {"role": "user", "content": "Ahoy there"},
        ],
        extra_headers={"X-Thread-Id": "pirate"},
    )
    [call] = _generation_calls(model, "Ahoy there")
    system = [m for m in call["messages"] if isinstance(m, SystemMessage)]
    assert any("Captain Pirate" in str(m.content) for m in system)


async def test_thread_stream_saves_the_turn(
    client: openai.AsyncOpenAI, model: ScriptedChatModel, service: ChatService
) -> None:
    model.enqueue("Streaming works fine today.")
    stream = await client.chat.completions.create(
        model="steadychat",
        messages=[{"role": "user", "content": "Does streaming work?"}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"X-Thread-Id": "streamed"},
    )
    chunks = [chunk async for chunk in stream]

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Streaming works fine today."
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finish) == 1
    assert finish[0].model_extra["steadychat"]["thread_id"] == "streamed"
    assert finish[0].model_extra["steadychat"]["turn"] == 1
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    view = await service.get_thread("streamed", owner="anonymous")
    assert view.info.turns == 1
    assert view.window[-1].content == "Streaming works fine today."


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": ["ok", ""]}, "stop"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
async def test_invalid_parameters_are_bad_requests(
    client: openai.AsyncOpenAI, model: ScriptedChatModel, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="steadychat", messages=[{"role": "user", "content": "hi"}], **extra
        )
    assert caught.value.status_code == 400
    assert caught.value.type == "invalid_request_error"
    assert caught.value.param is not None and caught.value.param.startswith(param)
    assert model.history == []


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([], "messages"),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}], "messages"),
        ([{"role": "tool", "content": "x"}], "messages[0]"),
        (
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "look"},
                        {"type": "image_url", "image_url": {"url": "http://x/y.png"}},
                    ],
                }
            ],
            "messages[0].content[1].type",
        ),
        ([{"role": "user", "content": None}], "messages[0].content"),
        ([{"role": "user"}], "messages[0].content"),
    ],
)
async def test_invalid_messages_are_bad_requests(
    client: openai.AsyncOpenAI, messages: list[dict[str, Any]], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="steadychat", messages=messages)  # type: ignore[arg-type]
    assert caught.value.param is not None and caught.value.param.startswith(param)
    assert caught.value.body is not None and caught.value.message


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"extra_body": {"some_vendor_field": {"a": 1}}}, "some_vendor_field"),
        # The scripted model runs no generate(): what needs logits processors is refused.
        ({"presence_penalty": 0.1}, "presence_penalty"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"logit_bias": {"42": 1}}, "logit_bias"),
        ({"logprobs": True}, "logprobs"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {}},
                }
            },
            "response_format",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f"}}]},
            "tools",
        ),
    ],
)
async def test_unserved_fields_are_named_in_a_400(
    client: openai.AsyncOpenAI, model: ScriptedChatModel, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="steadychat", messages=[{"role": "user", "content": "hi"}], **extra
        )
    assert caught.value.param == param
    assert model.history == []


async def test_harmless_fields_are_accepted(
    client: openai.AsyncOpenAI, model: ScriptedChatModel
) -> None:
    model.enqueue("fine")
    response = await client.chat.completions.create(
        model="steadychat",
        messages=[{"role": "user", "content": "hi"}],
        metadata={"k": "v"},
        store=False,
        presence_penalty=0,
    )
    assert response.choices[0].message.content == "fine"


async def test_context_length_exceeded_stateless(
    app: FastAPI, client: openai.AsyncOpenAI, model: ScriptedChatModel
) -> None:
    model.context_window = 64
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="steadychat", messages=[{"role": "user", "content": "word " * 80}]
        )
    assert caught.value.code == "context_length_exceeded"
    assert caught.value.param == "messages"
    assert "64" in caught.value.message

    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="steadychat", messages=[{"role": "user", "content": "short"}], max_tokens=100
        )
    assert caught.value.code == "context_length_exceeded"
    assert model.history == []


async def test_context_length_exceeded_in_a_thread(tmp_path: Path) -> None:
    settings = _settings(tmp_path, context_window=256)
    async with (
        _open(settings, ScriptedChatModel()) as svc,
        _client(create_app(svc, settings=settings)) as client,
    ):
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as caught:
                await client.chat.completions.create(
                    model="steadychat",
                    messages=[{"role": "user", "content": "word " * 400}],
                    extra_headers={"X-Thread-Id": "too-long"},
                    stream=stream,
                )
            assert caught.value.code == "context_length_exceeded"
        view = await svc.get_thread("too-long", owner="anonymous")
        assert view.info.turns == 0


async def test_tenants_cannot_reach_each_others_threads(tmp_path: Path) -> None:
    settings = _settings(tmp_path, api_keys=[KEY_A, KEY_B])
    async with _open(settings, ScriptedChatModel()) as svc:
        app = create_app(svc, settings=settings)
        async with _client(app, KEY_A) as a, _client(app, KEY_B) as b, _client(app, "wrong") as c:
            headers = {"X-Thread-Id": "private-thread"}
            done = await a.chat.completions.create(
                model="steadychat",
                messages=[{"role": "user", "content": "hello"}],
                extra_headers=headers,
            )
            assert done.model_extra["steadychat"]["turn"] == 1

            with pytest.raises(openai.NotFoundError):
                await b.chat.completions.create(
                    model="steadychat",
                    messages=[{"role": "user", "content": "let me in"}],
                    extra_headers=headers,
                )
            with pytest.raises(openai.NotFoundError):
                await b.chat.completions.create(
                    model="steadychat",
                    messages=[{"role": "user", "content": "let me in"}],
                    extra_headers=headers,
                    stream=True,
                )
            with pytest.raises(openai.AuthenticationError) as caught:
                await c.chat.completions.create(
                    model="steadychat", messages=[{"role": "user", "content": "hi"}]
                )
            assert caught.value.type == "authentication_error"
            with pytest.raises(openai.AuthenticationError):
                await c.models.list()

            view = await svc.get_thread("private-thread")
            assert view.info.turns == 1


async def test_over_long_messages_are_refused(tmp_path: Path) -> None:
    settings = _settings(tmp_path, max_message_chars=40)
    model = ScriptedChatModel()
    async with _open(settings, model) as svc, _client(create_app(svc, settings=settings)) as client:
        for headers in ({}, {"X-Thread-Id": "long-one"}):
            with pytest.raises(openai.BadRequestError) as caught:
                await client.chat.completions.create(
                    model="steadychat",
                    messages=[
                        {"role": "system", "content": "short"},
                        {"role": "user", "content": "x" * 41},
                    ],
                    extra_headers=headers,
                )
            assert caught.value.code == "message_too_long"
            assert caught.value.param == "messages[1].content"
        assert model.history == []


async def test_model_crash_is_a_server_error_without_internals(
    client: openai.AsyncOpenAI, model: ScriptedChatModel
) -> None:
    def crash(messages: list[BaseMessage]) -> str:
        raise RuntimeError("CUDA error at /secret/path")

    model.responder = crash
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(
            model="steadychat", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.type == "server_error"
    assert "secret" not in caught.value.response.text


class GatedModel(ScriptedChatModel):
    """Holds its reply until the test opens the gate, so that a turn stays running."""

    _gate: threading.Event = PrivateAttr(default_factory=threading.Event)

    @property
    def gate(self) -> threading.Event:
        return self._gate

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        chunks = super()._stream(messages, stop, run_manager, **kwargs)
        first = next(chunks)  # the call is in ``history`` from here on
        self._gate.wait(timeout=10)
        yield first
        yield from chunks


async def test_busy_thread_answers_conflict_when_the_policy_rejects(tmp_path: Path) -> None:
    settings = _settings(tmp_path, busy_policy="reject")
    model = GatedModel(default="done at last")
    async with _open(settings, model) as svc, _client(create_app(svc, settings=settings)) as client:
        headers = {"X-Thread-Id": "busy-thread"}
        first = asyncio.create_task(
            client.chat.completions.create(
                model="steadychat",
                messages=[{"role": "user", "content": "one"}],
                extra_headers=headers,
            )
        )
        try:
            async with asyncio.timeout(10):
                while not model.history:  # noqa: ASYNC110 - the model exposes no event
                    await asyncio.sleep(0.01)
            with pytest.raises(openai.ConflictError) as caught:
                await client.chat.completions.create(
                    model="steadychat",
                    messages=[{"role": "user", "content": "two"}],
                    extra_headers=headers,
                )
            assert caught.value.response.headers["x-should-retry"] == "false"
        finally:
            model.gate.set()
        done = await first
        assert done.choices[0].message.content == "done at last"
        assert done.model_extra["steadychat"]["turn"] == 1


async def test_bad_thread_id_header(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="steadychat",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"X-Thread-Id": "no spaces/allowed"},
        )
    assert caught.value.param == "X-Thread-Id"  # the header's name, not "header.X-Thread-Id"
    assert "'X-Thread-Id'" in caught.value.message


# -- response_format json_object --------------------------------------------------------------


async def test_json_object_valid_reply_passes(
    client: openai.AsyncOpenAI, model: ScriptedChatModel
) -> None:
    model.enqueue('{"city": "Paris", "country": "France"}')
    response = await client.chat.completions.create(
        model="steadychat",
        messages=[{"role": "user", "content": "Give the capital of France as JSON."}],
        response_format={"type": "json_object"},
    )
    assert json.loads(response.choices[0].message.content or "") == {
        "city": "Paris",
        "country": "France",
    }
    [call] = model.history
    assert isinstance(call["messages"][0], SystemMessage)
    assert "JSON" in str(call["messages"][0].content)


async def test_json_object_retries_once_after_invalid_output(
    client: openai.AsyncOpenAI, model: ScriptedChatModel
) -> None:
    fenced = '```json\n{"city": "Paris"}\n```'
    model.enqueue("Sure! The city is Paris.", fenced)
    response = await client.chat.completions.create(
        model="steadychat",
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "City as JSON please."},
        ],
        response_format={"type": "json_object"},
    )
    assert json.loads(response.choices[0].message.content or "") == {"city": "Paris"}
    first, retry = model.history
    assert len([m for m in first["messages"] if isinstance(m, SystemMessage)]) == 1
    assert isinstance(retry["messages"][-2], AIMessage)
    assert retry["messages"][-2].content == "Sure! The city is Paris."
    assert "not a valid JSON object" in str(retry["messages"][-1].content)
    assert response.usage is not None
    # Both attempts were generated, so both count.
    assert response.usage.completion_tokens == model.get_num_tokens(
        "Sure! The city is Paris."
    ) + model.get_num_tokens(fenced)


async def test_json_object_still_invalid_is_an_honest_server_error(
    client: openai.AsyncOpenAI, model: ScriptedChatModel
) -> None:
    model.enqueue("no json here", "[1, 2, 3]")
    with pytest.raises(openai.InternalServerError) as caught:
        await client.chat.completions.create(
            model="steadychat",
            messages=[{"role": "user", "content": "JSON please"}],
            response_format={"type": "json_object"},
        )
    assert caught.value.code == "invalid_json_output"
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert len(model.history) == 2


async def test_json_object_streamed_and_in_a_thread(
    client: openai.AsyncOpenAI, model: ScriptedChatModel
) -> None:
    model.responder = lambda messages: (
        '{"ok": true}' if "not a valid JSON" in str(messages[-1].content) else "plain words"
    )
    stream = await client.chat.completions.create(
        model="steadychat",
        messages=[{"role": "user", "content": "status as JSON"}],
        response_format={"type": "json_object"},
        stream=True,
        extra_headers={"X-Thread-Id": "json-thread"},
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert json.loads(text) == {"ok": True}
    [finish] = [c for c in chunks if c.choices[0].finish_reason]
    assert finish.model_extra["steadychat"]["turn"] == 2


# -- models ------------------------------------------------------------------------------------


async def test_models_list_and_retrieve(client: openai.AsyncOpenAI) -> None:
    page = await client.models.list()
    card, alias = page.data
    assert (card.id, alias.id) == ("steadychat-test-model", "steadychat")
    assert (await client.models.retrieve("steadychat")).id == "steadychat"
    assert card.object == "model"
    assert card.owned_by == "steadychat"
    assert card.created > 0

    same = await client.models.retrieve("steadychat-test-model")
    assert same.id == card.id and same.created == card.created
    with pytest.raises(openai.NotFoundError) as caught:
        await client.models.retrieve("gpt-unknown")
    assert caught.value.code == "model_not_found"


async def test_an_unknown_model_is_openais_404(
    client: openai.AsyncOpenAI, model: ScriptedChatModel
) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await client.chat.completions.create(
            model="gpt-unknown", messages=[{"role": "user", "content": "hi"}]
        )
    assert caught.value.code == "model_not_found"
    assert caught.value.body["param"] == "model"  # type: ignore[index]
    assert model.history == []
    for name in ("steadychat", "steadychat-test-model"):
        model.enqueue("ok")
        reply = await client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "hi"}]
        )
        assert reply.model == "steadychat-test-model"


async def test_model_id_with_a_slash(tmp_path: Path) -> None:
    settings = _settings(tmp_path).model_copy(update={"model": "Qwen/Qwen3-4B-Instruct-2507"})
    async with (
        _open(settings, ScriptedChatModel()) as svc,
        _client(create_app(svc, settings=settings)) as client,
    ):
        card = await client.models.retrieve("Qwen/Qwen3-4B-Instruct-2507")
        assert card.id == "Qwen/Qwen3-4B-Instruct-2507"
        response = await client.chat.completions.create(
            model=card.id, messages=[{"role": "user", "content": "hi"}]
        )
        assert response.model == "Qwen/Qwen3-4B-Instruct-2507"


# -- the real transformers path ----------------------------------------------------------------


async def test_tiny_transformers_model_through_the_openai_client(
    tmp_path: Path, tiny_chat_model: Any
) -> None:
    settings = _settings(tmp_path, context_window=1024)
    async with (
        _open(settings, tiny_chat_model) as svc,
        _client(create_app(svc, settings=settings)) as client,
    ):
        response = await client.chat.completions.create(
            model="steadychat",
            messages=[
                {"role": "system", "content": "You are helpful."},
                {"role": "user", "content": "Hello there"},
            ],
            max_tokens=6,
            temperature=0,
        )
        usage = response.usage
        assert usage is not None
        assert 0 < usage.completion_tokens <= 6
        assert usage.prompt_tokens == tiny_chat_model.get_num_tokens_from_messages(
            [SystemMessage(content="You are helpful."), HumanMessage(content="Hello there")]
        )
        assert response.choices[0].finish_reason in ("stop", "length")

        stream = await client.chat.completions.create(
            model="steadychat",
            messages=[{"role": "user", "content": "Hello again"}],
            max_tokens=6,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"X-Thread-Id": "tiny-thread"},
        )
        chunks = [chunk async for chunk in stream]
        assert chunks[-1].usage is not None
        assert 0 < chunks[-1].usage.completion_tokens <= 6
        stateless = await client.chat.completions.create(
            model="steadychat",
            messages=[{"role": "user", "content": "Hello"}],
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
        pieces = [chunk async for chunk in stateless]
        assert pieces[-1].usage is not None and 0 < pieces[-1].usage.completion_tokens <= 4
        assert len([c for c in pieces if c.choices and c.choices[0].finish_reason]) == 1
        assert len([c for c in chunks if c.choices and c.choices[0].finish_reason]) == 1
        view = await svc.get_thread("tiny-thread", owner="anonymous")
        assert view.info.turns == 1


async def test_any_integer_seed_is_served_by_the_real_model(
    tmp_path: Path, tiny_chat_model: Any
) -> None:
    # OpenAI's seed is any integer; transformers' RNG takes only 0..2**32-1. Out-of-range
    # seeds used to fail the turn with a 500 (stateless, streamed, stateful and REST).
    settings = _settings(tmp_path, context_window=1024)
    async with (
        _open(settings, tiny_chat_model) as svc,
        _client(create_app(svc, settings=settings)) as client,
    ):
        messages: Any = [{"role": "user", "content": "Hello"}]
        for seed in (-5, 2**63 - 1, 10**30):
            reply = await client.chat.completions.create(
                model="steadychat", messages=messages, max_tokens=3, seed=seed
            )
            assert reply.choices[0].finish_reason in ("stop", "length")
        again = await client.chat.completions.create(
            model="steadychat", messages=messages, max_tokens=3, seed=-5
        )
        first = await client.chat.completions.create(
            model="steadychat", messages=messages, max_tokens=3, seed=-5
        )
        assert again.choices[0].message.content == first.choices[0].message.content
        stream = await client.chat.completions.create(
            model="steadychat", messages=messages, max_tokens=3, seed=-1, stream=True
        )
        assert [chunk async for chunk in stream][-1].choices[0].finish_reason is not None
        stateful = await client.chat.completions.create(
            model="steadychat",
            messages=messages,
            max_tokens=3,
            seed=-1,
            extra_headers={"X-Thread-Id": "seeded"},
        )
        assert stateful.choices[0].finish_reason in ("stop", "length")
        rest = await client._client.post(
            "/threads/seeded/messages",
            json={"content": "Hi again", "seed": 2**63 - 1, "max_tokens": 3},
        )
        assert rest.status_code == 200, rest.text
        assert rest.json()["turn"] == 2


class ThreadRecordingModel(ScriptedChatModel):
    """Notes which threads count prompt tokens."""

    _counting_threads: set[int] = PrivateAttr(default_factory=set)

    @property
    def counting_threads(self) -> set[int]:
        return self._counting_threads

    def get_num_tokens_from_messages(self, messages: list[BaseMessage], *args: Any) -> int:
        self._counting_threads.add(threading.get_ident())
        return super().get_num_tokens_from_messages(messages)


async def test_stateless_prompt_is_counted_off_the_event_loop(tmp_path: Path) -> None:
    # Tokenizing a body of a few MB takes seconds; on the event loop it stalls every stream.
    model = ThreadRecordingModel()
    settings = _settings(tmp_path)
    async with (
        _open(settings, model) as svc,
        _client(create_app(svc, settings=settings)) as client,
    ):
        loop_thread = threading.get_ident()
        await client.chat.completions.create(
            model="steadychat", messages=[{"role": "user", "content": "Hello"}], max_tokens=5
        )
        stream = await client.chat.completions.create(
            model="steadychat",
            messages=[{"role": "user", "content": "Hello"}],
            max_tokens=5,
            stream=True,
        )
        assert [chunk async for chunk in stream]
    assert model.counting_threads and loop_thread not in model.counting_threads


async def test_completions_count_in_the_turn_metrics(
    app: FastAPI, client: openai.AsyncOpenAI
) -> None:
    # Turns, latency, first tokens and tokens were only counted for the REST routes, so a
    # deployment used through OpenAI clients showed no turns and no tokens at all.
    from tests.integration.test_api_operations import samples

    messages: Any = [{"role": "user", "content": "Hello there"}]
    plain = await client.chat.completions.create(model="steadychat", messages=messages)
    stream = await client.chat.completions.create(
        model="steadychat", messages=messages, stream=True, extra_headers={"X-Thread-Id": "metered"}
    )
    assert [chunk async for chunk in stream]
    await client.chat.completions.create(
        model="steadychat", messages=messages, extra_headers={"X-Thread-Id": "metered"}
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        text = (await http.get("/metrics")).text
    turns = {s["outcome"]: v for s, v in samples(text, "steadychat_turns_total")}
    assert turns == {"ok": 3}
    modes = {s["mode"]: v for s, v in samples(text, "steadychat_turn_duration_seconds_count")}
    assert modes == {"json": 2, "stream": 1}
    assert samples(text, "steadychat_time_to_first_token_seconds_count")[0][1] == 1
    assert plain.usage is not None
    completion = samples(text, "steadychat_completion_tokens_total")[0][1]
    assert completion > plain.usage.completion_tokens > 0
    assert samples(text, "steadychat_turns_in_flight")[0][1] == 0


async def test_idempotency_key_makes_a_retried_turn_run_once(
    app: FastAPI, client: openai.AsyncOpenAI, model: ScriptedChatModel
) -> None:
    # A retried stateful call (timeouts, 5xx: the openai client retries on its own) with the
    # same Idempotency-Key must not run the turn a second time.
    model.enqueue("first answer", "streamed answer", "another thread")
    messages: Any = [{"role": "user", "content": "Hello there"}]
    headers = {"X-Thread-Id": "idem", "Idempotency-Key": "k-1"}
    first = await client.chat.completions.with_raw_response.create(
        model="steadychat", messages=messages, extra_headers=headers
    )
    retry = await client.chat.completions.with_raw_response.create(
        model="steadychat", messages=messages, extra_headers=headers
    )
    assert retry.headers.get("Idempotent-Replayed") == "true"
    assert first.parse().choices[0].message.content == "first answer"
    assert retry.parse().choices[0].message.content == "first answer"
    assert retry.parse().model_extra["steadychat"]["turn"] == 1

    stream_headers = {"X-Thread-Id": "idem", "Idempotency-Key": "k-2"}
    texts = []
    for _ in range(2):
        stream = await client.chat.completions.create(
            model="steadychat", messages=messages, stream=True, extra_headers=stream_headers
        )
        texts.append("".join([c.choices[0].delta.content or "" async for c in stream if c.choices]))
    assert texts == ["streamed answer", "streamed answer"]

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        detail = (await http.get("/threads/idem")).json()
        assert detail["thread"]["turns"] == 2
        # The same key for another thread is another request: refused, not replayed.
        other = await http.post(
            "/v1/chat/completions",
            json={"model": "steadychat", "messages": messages},
            headers={"X-Thread-Id": "other", "Idempotency-Key": "k-1"},
        )
        assert other.status_code == 422
        assert other.json()["error"]["code"] == "idempotency_key_reused"
        assert (await http.get("/threads/other")).status_code == 404


async def test_thread_call_ending_with_an_assistant_message_is_refused(
    app: FastAPI, client: openai.AsyncOpenAI, model: ScriptedChatModel
) -> None:
    # The last user message used to be taken anyway: it was answered and saved a second time.
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="steadychat",
            messages=[
                {"role": "user", "content": "My name is Bob."},
                {"role": "assistant", "content": "Hello Bob."},
            ],
            extra_headers={"X-Thread-Id": "ends-with-assistant"},
        )
    assert caught.value.param == "messages"
    assert model.history == []
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        assert (await http.get("/threads/ends-with-assistant")).status_code == 404
