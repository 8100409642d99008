"""LoCoMo on the product path: conversations replayed through the service, each prompt scored."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import PrivateAttr

from api.replay import ReplayStep, replay
from bench.locomo import Conversation, Question, plain_terms, rrf
from graph.service import ChatService
from nodes.generate_reply import _snippet_text, user_text_of  # the product's snippet line
from nodes.memory import Embedder, MemoryHit, MemoryRecord, MemoryStore
from nodes.state import ContextAccount, Snippet
from nodes.text import message_text
from store.lexical import BM25Scorer

__all__ = [
    "PromptRecorder",
    "QuestionResult",
    "ReplayPlan",
    "WriteGate",
    "generic_reply",
    "plan_replay",
    "run_product_path",
]

Key = tuple[int, str]
"""Where a LoCoMo turn lives in the thread: (turn number, "user" or "assistant")."""


def generic_reply(messages: list[BaseMessage]) -> str:
    """What a weak assistant answers to anything: the question restated, and no new fact.

    Args:
        messages: The prompt; its last message is the user's.

    Returns:
        A reply that adds no information to the conversation.
    """
    last = user_text_of(message_text(messages[-1])) if messages else ""
    asked = last.strip().rstrip("?？").strip()
    return f"You asked: {asked}. I am not sure I remember that; could you remind me?"


class PromptRecorder(BaseChatModel):
    """A chat model that records every prompt it gets and replies with ``reply(messages)``.

    Tokens are counted by ``counter`` (the real model's tokenizer and chat template), so the
    prompt the graph assembles is the one that model would get; nothing is generated.
    """

    counter: Any
    """The model whose ``get_num_tokens*`` count the prompt."""
    context_window: int = 8192
    reply: Callable[[list[BaseMessage]], str] = generic_reply
    _prompts: list[list[BaseMessage]] = PrivateAttr(default_factory=list)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def _llm_type(self) -> str:
        return "prompt-recorder"

    @property
    def prompts(self) -> list[list[BaseMessage]]:
        """Every prompt received, oldest first."""
        return self._prompts

    def get_num_tokens(self, text: str) -> int:
        """Tokens of ``text`` under the counting model."""
        return int(self.counter.get_num_tokens(text))

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None
    ) -> int:
        """Tokens of the templated prompt under the counting model."""
        return int(self.counter.get_num_tokens_from_messages(messages))

    def _answer(self, messages: list[BaseMessage]) -> str:
        with self._lock:
            self._prompts.append(list(messages))
        return self.reply(messages)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        message = AIMessage(
            content=self._answer(messages), response_metadata={"finish_reason": "stop"}
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        text = self._answer(messages)
        yield ChatGenerationChunk(message=AIMessageChunk(content=text))
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="", response_metadata={"finish_reason": "stop"}, chunk_position="last"
            )
        )


class WriteGate:
    """A memory store whose writes can be shut: questions are asked without being remembered."""

    def __init__(self, inner: MemoryStore) -> None:
        """Wrap a store; writes pass until :attr:`open` is set to False."""
        self.inner = inner
        self.open = True

    def add(self, records: Sequence[MemoryRecord]) -> None:
        """Write through while open; drop the records otherwise."""
        if self.open:
            self.inner.add(records)

    def search(self, query: str, **kwargs: Any) -> list[MemoryHit]:
        """The inner store's search."""
        return self.inner.search(query, **kwargs)

    def delete_thread(self, thread_id: str) -> int:
        """The inner store's delete."""
        return self.inner.delete_thread(thread_id)

    def delete_records(self, ids: Sequence[str]) -> int:
        """The inner store's delete by id."""
        return self.inner.delete_records(ids)

    def clear_thread(self, thread_id: str) -> int:
        """The inner store's clear."""
        return self.inner.clear_thread(thread_id)

    def count(self, *, thread_id: str | None = None) -> int:
        """The inner store's count."""
        return self.inner.count(thread_id=thread_id)


@dataclass(frozen=True)
class ReplayPlan:
    """A conversation as a thread's turns: who speaks as the user, and where each turn lands."""

    steps: list[ReplayStep]
    where: dict[str, Key]
    """dia_id -> (turn, role)."""
    texts: dict[str, str]
    """dia_id -> the message text the thread got ("Speaker: text")."""
    ask_time: datetime
    """When the questions are asked: a day after the last session."""


def plan_replay(conv: Conversation) -> ReplayPlan:
    """Lay a two-person conversation out as user turns with recorded replies.

    Within a session the speakers alternate; whoever opens a session speaks as the user and
    the other as the assistant, so every session is whole exchanges (a session that ends on
    the user's side gets an empty recorded reply, which memory skips). Each message keeps its
    speaker's name ("Caroline: ..."), so the roles never hide who said what.

    Args:
        conv: A loaded conversation.

    Returns:
        The replay steps, with each LoCoMo turn's place in the thread.
    """
    steps: list[ReplayStep] = []
    where: dict[str, Key] = {}
    texts: dict[str, str] = {}
    sessions: dict[int, list[int]] = {}
    for index, turn in enumerate(conv.turns):
        sessions.setdefault(turn.session, []).append(index)
    for indices in sessions.values():
        for start in range(0, len(indices), 2):
            user = conv.turns[indices[start]]
            when = datetime.fromisoformat(user.timestamp)
            number = len(steps) + 1
            where[user.dia_id] = (number, "user")
            texts[user.dia_id] = user.text
            reply_text = ""
            if start + 1 < len(indices):
                reply = conv.turns[indices[start + 1]]
                where[reply.dia_id] = (number, "assistant")
                texts[reply.dia_id] = reply.text
                reply_text = reply.text
            steps.append(
                ReplayStep(
                    text=user.text,
                    timestamp=when,
                    recorded_reply=reply_text,
                    recorded_timestamp=when,
                )
            )
    last = max(datetime.fromisoformat(t.timestamp) for t in conv.turns)
    return ReplayPlan(steps, where, texts, last + timedelta(days=1))


@dataclass
class QuestionResult:
    """What one question's prompt held, ours and the fusion baseline's at the same tokens."""

    conv_id: str
    category: int
    evidence: bool
    """An evidence turn is in the prompt (window or recalled)."""
    evidence_recalled: bool
    """An evidence turn is among the recalled snippets."""
    answer: bool
    """The answer string is in the prompt."""
    prompt_tokens: int
    memory_tokens: int
    fusion_evidence: bool
    fusion_evidence_recalled: bool
    fusion_answer: bool
    recalled: int = 0
    """Snippets recalled into the prompt."""
    polluting: int = 0
    """Of those, snippets of earlier questions or of the replies to them."""


@dataclass
class _Fusion:
    """The fusion baseline over one conversation's turns: BM25 + dense, reciprocal rank fusion."""

    keys: list[Key]
    snippets: list[str]
    bm25: BM25Scorer
    vectors: Any
    embedder: Embedder
    counts: dict[int, int] = field(default_factory=dict)

    def order(self, question: str) -> list[int]:
        lexical = self.bm25.scores(plain_terms(question).terms.elements())
        bm25_order = sorted(range(len(self.keys)), key=lambda i: -lexical[i])
        query = np.asarray(self.embedder.embed_query(question), dtype=np.float64)
        dense = self.vectors @ query
        dense_order = [int(i) for i in np.argsort(-dense, kind="stable")]
        return rrf(bm25_order, dense_order)


def _fusion(
    conv: Conversation, plan: ReplayPlan, embedder: Embedder, context_texts: Sequence[str]
) -> _Fusion:
    keys = [plan.where[t.dia_id] for t in conv.turns]
    snippets = []
    for turn, key in zip(conv.turns, keys, strict=True):
        snippet: Snippet = {
            "id": turn.dia_id,
            "text": plan.texts[turn.dia_id],
            "thread_id": conv.conv_id,
            "turn": key[0],
            "role": key[1],
            "timestamp": turn.timestamp,
            "score": 0.0,
        }
        snippets.append(_snippet_text(snippet))
    bm25 = BM25Scorer([plain_terms(t) for t in context_texts])
    vectors = np.asarray(embedder.embed_documents(list(context_texts)), dtype=np.float64)
    return _Fusion(keys, snippets, bm25, vectors, embedder)


def _window_keys(messages: Sequence[BaseMessage], dropped: Sequence[str], before: int) -> set[Key]:
    gone = {label.split(":t", 1)[1] for label in dropped if label.startswith("window:t")}
    keys: set[Key] = set()
    for message in messages:
        turn = message.additional_kwargs.get("turn")
        if not isinstance(turn, int) or turn >= before or str(turn) in gone:
            continue
        keys.add((turn, "user" if message.type == "human" else "assistant"))
    return keys


def _evidence_keys(question: Question, plan: ReplayPlan) -> set[Key]:
    return {plan.where[d] for d in question.evidence if d in plan.where}


async def _ask(
    service: ChatService,
    recorder: PromptRecorder,
    thread_id: str,
    question: Question,
    plan: ReplayPlan,
    fusion: _Fusion,
    *,
    conv_id: str,
    last_replayed: int,
) -> QuestionResult:
    config: Any = {"configurable": {"thread_id": thread_id}}
    result = await service.run_turn(thread_id, question.text, timestamp=plan.ask_time)
    prompt = recorder.prompts[-1]
    values = (await service.graph.aget_state(config)).values
    account: ContextAccount = result.context_account
    recalled = list(account.get("recalled") or [])
    window = _window_keys(values.get("messages") or [], account.get("dropped") or [], result.turn)
    recall_keys = {(s["turn"], s["role"]) for s in recalled}
    evidence = _evidence_keys(question, plan)
    # The whole prompt but the question itself (wherever the layout puts the per-turn parts).
    prompt_text = "\n".join(message_text(m) for m in prompt).replace(question.text, "", 1)
    answer = question.answer.lower()

    # The baseline gets the tokens our snippets took, in the same snippet format, and the
    # same prompt around them.
    lines = [_snippet_text(s) for s in recalled]
    budget = sum(recorder.get_num_tokens(line) for line in lines)
    base_text = prompt_text
    for line in lines:
        base_text = base_text.replace(line, "", 1)
    picked: list[int] = []
    used = 0
    for index in fusion.order(question.text):
        if fusion.keys[index] in window:
            continue
        cost = fusion.counts.get(index)
        if cost is None:
            cost = fusion.counts[index] = recorder.get_num_tokens(fusion.snippets[index])
        if used + cost > budget:
            continue
        picked.append(index)
        used += cost
    fusion_keys = {fusion.keys[i] for i in picked}
    fusion_text = base_text + "\n" + "\n".join(fusion.snippets[i] for i in picked)
    return QuestionResult(
        conv_id=conv_id,
        category=question.category,
        evidence=bool(evidence & (window | recall_keys)),
        evidence_recalled=bool(evidence & recall_keys),
        answer=answer in prompt_text.lower(),
        prompt_tokens=int(account.get("total", 0)),
        memory_tokens=int((account.get("sections") or {}).get("memories", 0)),
        fusion_evidence=bool(evidence & (window | fusion_keys)),
        fusion_evidence_recalled=bool(evidence & fusion_keys),
        fusion_answer=answer in fusion_text.lower(),
        recalled=len(recalled),
        polluting=sum(1 for s in recalled if s["turn"] > last_replayed),
    )


async def run_conversation(
    service: ChatService,
    recorder: PromptRecorder,
    gate: WriteGate,
    conv: Conversation,
    embedder: Embedder,
    context_texts: Sequence[str],
    *,
    sequential: bool,
) -> tuple[list[QuestionResult], list[QuestionResult]]:
    """Replay one conversation, then ask its questions: each from the replayed state, then in a row.

    Args:
        service: The service (its graph, checkpointer and memory are the product's).
        recorder: The service's chat model.
        gate: The service's memory, wrapped.
        conv: The conversation.
        embedder: The dense baseline's embedder.
        context_texts: The baseline's text of each turn.
        sequential: Also ask the questions one after another, remembered as a user's would be.

    Returns:
        Per question: asked from the replayed state (nothing of one question reaches the next),
        and asked in a row (empty unless ``sequential``).
    """
    thread_id = f"locomo-{conv.conv_id}"
    plan = plan_replay(conv)
    gate.open = True
    await replay(service, thread_id, plan.steps)
    last = len(plan.steps)
    fusion = await asyncio.to_thread(_fusion, conv, plan, embedder, context_texts)
    config: Any = {"configurable": {"thread_id": thread_id}}
    replayed = await service.graph.aget_state(config)
    forked: list[QuestionResult] = []
    gate.open = False
    for question in conv.questions:
        forked.append(
            await _ask(
                service,
                recorder,
                thread_id,
                question,
                plan,
                fusion,
                conv_id=conv.conv_id,
                last_replayed=last,
            )
        )
        # Back to the replayed state: the next question sees exactly what this one saw.
        await service.graph.aupdate_state(replayed.config, None, as_node="__copy__")
        replayed = await service.graph.aget_state(config)
    in_a_row: list[QuestionResult] = []
    if sequential:
        gate.open = True
        for question in conv.questions:
            in_a_row.append(
                await _ask(
                    service,
                    recorder,
                    thread_id,
                    question,
                    plan,
                    fusion,
                    conv_id=conv.conv_id,
                    last_replayed=last,
                )
            )
    return forked, in_a_row


async def run_product_path(
    conversations: Sequence[Conversation],
    *,
    counter: BaseChatModel,
    embedder: Embedder,
    memory: MemoryStore,
    context_window: int,
    service_options: dict[str, Any],
    context_options: dict[str, Any] | None = None,
    sequential: bool = True,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[QuestionResult], list[QuestionResult]]:
    """Run the product-path arm over the conversations.

    Args:
        conversations: What ``load_conversations`` returned.
        counter: The chat model whose tokenizer counts the prompt.
        embedder: Embedder of the fusion baseline (the store has its own).
        memory: The product's vector memory (fresh).
        context_window: Tokens per call, as the product's settings give them.
        service_options: ``Settings`` fields for the service (the product's defaults unless
            given).
        context_options: ``Context`` fields that override the service's per-run defaults
            (a retrieval lever under measurement, e.g. ``{"memory_diversity": 0.3}``).
        sequential: Also run the questions in a row (the pollution measurement).
        progress: Called with a line per conversation.

    Returns:
        The results of every question, asked from the replayed state and in a row.
    """
    import time

    from graph.compose import open_service
    from graph.settings import Settings

    recorder = PromptRecorder(counter=counter, context_window=context_window)
    gate = WriteGate(memory)
    settings = Settings(checkpointer_url="memory", **service_options)
    forked: list[QuestionResult] = []
    in_a_row: list[QuestionResult] = []
    async with open_service(settings, chat_model=recorder, memory=gate) as service:
        # A fake model writes no summary worth keeping: the extractive summaries stand in.
        service.defaults = replace(
            service.defaults, model_summaries=False, **(context_options or {})
        )
        for conv in conversations:
            started = time.perf_counter()
            texts = [t.context_text for t in conv.turns]
            one, row = await run_conversation(
                service, recorder, gate, conv, embedder, texts, sequential=sequential
            )
            forked += one
            in_a_row += row
            if progress:
                progress(
                    f"{conv.conv_id} (product path): {len(conv.turns)} turns, "
                    f"{len(conv.questions)} questions, {time.perf_counter() - started:.1f} s"
                )
    return forked, in_a_row
