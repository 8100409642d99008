"""Fake chat models: a scripted one with a recorded history (benchmarks and tests), and one of
fixed cost that records its own time (the framework benchmark)."""

from __future__ import annotations

import threading
import time
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


class FixedCostChatModel(BaseChatModel):
    """Waits ``first_token_s``, then streams ``tokens`` words ``per_token_s`` apart.

    ``model_s`` adds up the time spent inside the model (every call, summaries included);
    ``first_token_at`` / ``last_token_at`` are the ``time.perf_counter()`` of the last call's
    first and last token.
    """

    first_token_s: float = 0.01
    per_token_s: float = 0.001
    tokens: int = 12
    context_window: int = 8192
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _model_s: float = PrivateAttr(default=0.0)
    _first: float = PrivateAttr(default=0.0)
    _last: float = PrivateAttr(default=0.0)

    @property
    def _llm_type(self) -> str:
        return "fixed-cost"

    @property
    def model_s(self) -> float:
        return self._model_s

    @property
    def first_token_at(self) -> float:
        return self._first

    @property
    def last_token_at(self) -> float:
        return self._last

    def get_num_tokens(self, text: str) -> int:
        return _count(text)

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None
    ) -> int:
        return sum(_count(str(m.content)) + 4 for m in messages) + 2

    def _words(self) -> list[str]:
        return [f"word{i} " for i in range(self.tokens)]

    def _usage(self, messages: list[BaseMessage]) -> dict[str, int]:
        prompt = self.get_num_tokens_from_messages(messages)
        return {
            "input_tokens": prompt,
            "output_tokens": self.tokens,
            "total_tokens": prompt + self.tokens,
        }

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        text = "".join(c.message.content for c in self._stream(messages))  # type: ignore[misc]
        message = AIMessage(
            content=text,
            usage_metadata=self._usage(messages),
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
        spent = 0.0
        start = time.perf_counter()
        time.sleep(self.first_token_s)
        for i, word in enumerate(self._words()):
            if i:
                time.sleep(self.per_token_s)
            now = time.perf_counter()
            if i == 0:
                self._first = now
            self._last = now
            spent += now - start
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=word))
            if run_manager:
                run_manager.on_llm_new_token(word, chunk=chunk)
            yield chunk  # the consumer's time until the next token is not the model's
            start = time.perf_counter()
        with self._lock:
            self._model_s += spent
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                usage_metadata=self._usage(messages),  # type: ignore[arg-type]
                response_metadata={"finish_reason": "stop"},
                chunk_position="last",
            )
        )


# Words of a support conversation, for synthetic user turns of a fixed shape.
WORDS = [
    "order",
    "ticket",
    "delivery",
    "refund",
    "account",
    "password",
    "address",
    "price",
    "week",
    "month",
    "help",
    "question",
    "answer",
    "summary",
    "memory",
    "profile",
    "thread",
    "turn",
    "token",
    "good",
    "great",
    "new",
    "old",
    "parcel",
    "late",
    "where",
]


def sentence(i: int, n: int) -> str:
    """A synthetic user turn of ``n`` words, the same for the same ``i``."""
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(n)) + "?"
