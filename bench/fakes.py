"""Scripted chat model with a recorded history of prompts: the benchmarks' fake, the tests' too."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import PrivateAttr


def _count(text: str) -> int:
    # One token per whitespace-separated word, and one per CJK character.
    cjk = sum(1 for ch in text if "\u4e00" <= ch <= "\u9fff")
    return len(text.split()) + cjk


class ScriptedChatModel(BaseChatModel):
    """Replies with queued texts (``enqueue``), else with ``default`` or ``responder(messages)``.

    Every call's messages and kwargs are recorded in ``history``. Token counting is one token per
    word (and per CJK character), so budgets are testable without a tokenizer.
    """

    default: str = "ok"
    context_window: int = 8192
    responder: Callable[[list[BaseMessage]], str] | None = None
    _queue: deque[str] = PrivateAttr(default_factory=deque)
    _history: list[dict[str, Any]] = PrivateAttr(default_factory=list)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    @property
    def history(self) -> list[dict[str, Any]]:
        return self._history

    def enqueue(self, *replies: str) -> ScriptedChatModel:
        self._queue.extend(replies)
        return self

    def get_num_tokens(self, text: str) -> int:
        return _count(text)

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None
    ) -> int:
        return sum(_count(str(m.content)) + 4 for m in messages) + 2

    def _next_reply(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> str:
        with self._lock:
            self._history.append({"messages": list(messages), "kwargs": dict(kwargs)})
            if self._queue:
                return self._queue.popleft()
        if self.responder is not None:
            return self.responder(messages)
        return self.default

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        text = self._next_reply(messages, {"stop": stop, **kwargs})
        prompt = self.get_num_tokens_from_messages(messages)
        completion = _count(text)
        message = AIMessage(
            content=text,
            usage_metadata={
                "input_tokens": prompt,
                "output_tokens": completion,
                "total_tokens": prompt + completion,
            },
            response_metadata={"finish_reason": "stop"},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        text = self._next_reply(messages, {"stop": stop, **kwargs})
        words = text.split(" ")
        for i, word in enumerate(words):
            piece = word if i == len(words) - 1 else word + " "
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=piece))
            if run_manager:
                run_manager.on_llm_new_token(piece, chunk=chunk)
            yield chunk
        prompt = self.get_num_tokens_from_messages(messages)
        completion = _count(text)
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                usage_metadata={
                    "input_tokens": prompt,
                    "output_tokens": completion,
                    "total_tokens": prompt + completion,
                },
                response_metadata={"finish_reason": "stop"},
                chunk_position="last",
            )
        )
