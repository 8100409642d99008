"""The compact_summary node: folds the oldest exchanges of the verbatim window into L1 and L2."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, RemoveMessage
from langchain_core.messages.utils import count_tokens_approximately
from langgraph.runtime import Runtime

from nodes.context import Context
from nodes.state import ChatState, LongSummary, SummaryChunk
from nodes.summaries import (
    DEFAULT_LIMITS,
    SummaryLimits,
    detect_language,
    extractive_line,
    fold_into_long,
    invents_identifiers,
    loses_pinned_fact,
    pinned_facts_from_slots,
    summarize_with_model,
)
from nodes.text import message_text

__all__ = ["count_window_tokens", "group_exchanges", "make_compact_summary"]

logger = logging.getLogger(__name__)

TokenCounter = Callable[[Sequence[BaseMessage]], int]


def count_window_tokens(chat_model: BaseChatModel | None, messages: Sequence[BaseMessage]) -> int:
    """Count messages in the model's own tokens.

    Uses ``get_num_tokens_from_messages`` (which includes the chat template's overhead), then
    ``get_num_tokens`` per message, and only without a usable model LangChain's character-based
    approximation.

    Args:
        chat_model: The chat model whose tokenizer counts, or None.
        messages: The messages to count.

    Returns:
        The token count (0 for no messages).
    """
    if not messages:
        return 0
    if chat_model is not None:
        try:
            return int(chat_model.get_num_tokens_from_messages(list(messages)))
        except Exception:  # a model without a message counter still counts text
            logger.debug("get_num_tokens_from_messages failed", exc_info=True)
        try:
            return sum(int(chat_model.get_num_tokens(message_text(m))) for m in messages)
        except Exception:  # e.g. a tokenizer that cannot be loaded offline
            logger.warning("model token counting failed; approximating", exc_info=True)
    return count_tokens_approximately(list(messages))


def group_exchanges(messages: Sequence[BaseMessage]) -> list[list[BaseMessage]]:
    """Split the window into exchanges: a user message and every reply up to the next one.

    Messages before the first user message join the first exchange, so no message is lost.

    Args:
        messages: The verbatim window, oldest first.

    Returns:
        The exchanges, oldest first.
    """
    exchanges: list[list[BaseMessage]] = []
    for message in messages:
        if message.type == "human" and exchanges and any(m.type == "human" for m in exchanges[-1]):
            exchanges.append([message])
        elif exchanges:
            exchanges[-1].append(message)
        else:
            exchanges.append([message])
    return exchanges


def _turn_of(exchange: Sequence[BaseMessage]) -> int | None:
    for message in exchange:
        turn = message.additional_kwargs.get("turn")
        if isinstance(turn, int) and not isinstance(turn, bool):
            return turn
    return None


def _exchange_turns(exchanges: Sequence[Sequence[BaseMessage]], current_turn: int) -> list[int]:
    # Messages stamped by begin_turn carry their turn; unstamped ones (written by a client
    # straight into state) are numbered backwards from the current turn.
    turns: list[int] = []
    for index, exchange in enumerate(exchanges):
        stamped = _turn_of(exchange)
        estimate = current_turn - (len(exchanges) - 1 - index)
        turns.append(stamped if stamped is not None else estimate)
    return turns


def _validate(ctx: Context) -> None:
    problems = []
    if ctx.window_tokens < 1:
        problems.append(f"window_tokens must be >= 1, got {ctx.window_tokens}")
    if ctx.min_window_turns < 0:
        problems.append(f"min_window_turns must be >= 0, got {ctx.min_window_turns}")
    if ctx.fold_turns < 1:
        problems.append(f"fold_turns must be >= 1, got {ctx.fold_turns}")
    if ctx.l1_max_chunks < 0:
        problems.append(f"l1_max_chunks must be >= 0, got {ctx.l1_max_chunks}")
    if problems:
        raise ValueError("invalid compaction settings: " + "; ".join(problems))


def make_compact_summary(
    chat_model: BaseChatModel | None,
    *,
    count_with: BaseChatModel | None = None,
    summary_tokens: int = 96,
    limits: SummaryLimits = DEFAULT_LIMITS,
) -> Callable[[ChatState, Runtime[Context]], dict[str, Any]]:
    """Build the compact_summary node.

    Args:
        chat_model: Summarizer, and token counter unless ``count_with`` is given; None folds
            extractively.
        count_with: The model whose tokenizer the window budget is counted in (the reply
            model, when a separate helper model summarizes); defaults to ``chat_model``, and
            without either LangChain's character-based approximation counts.
        summary_tokens: ``max_new_tokens`` of each L1 summary call.
        limits: Size bounds of L1 lines and of L2.

    Returns:
        A sync node ``(state, runtime) -> dict`` (see docs/CONTRACTS.md).

    Raises:
        ValueError: ``summary_tokens`` is below 1.
    """
    if summary_tokens < 1:
        raise ValueError(f"summary_tokens must be >= 1, got {summary_tokens}")

    def compact_summary(state: ChatState, runtime: Runtime[Context]) -> dict[str, Any]:
        """Fold the oldest whole exchanges out of the window when it exceeds its token budget.

        Folded exchanges become L1 lines (model summary, or extractive when the model is off,
        fails or drops a slot value) and leave state through ``RemoveMessage``; L1 lines beyond
        ``l1_max_chunks`` are folded into L2. The current user message and the last
        ``min_window_turns`` exchanges always stay verbatim.
        """
        ctx = runtime.context or Context()
        _validate(ctx)
        counter = count_with or chat_model
        messages: list[BaseMessage] = list(state.get("messages") or [])
        before = count_window_tokens(counter, messages)
        idle: dict[str, Any] = {
            "ran": False,
            "folded_turns": None,
            "method": None,
            "l2_folded": False,
            "window_tokens_before": before,
            "window_tokens_after": before,
        }
        if before <= ctx.window_tokens:
            return {"compaction": idle}

        exchanges = group_exchanges(messages)
        # The exchange holding the current user message is never folded, nor are the
        # min_window_turns complete exchanges before it.
        has_current = bool(messages) and messages[-1].type == "human"
        keep = ctx.min_window_turns + (1 if has_current else 0)
        foldable = max(len(exchanges) - keep, 0)
        if foldable == 0:
            return {"compaction": idle}

        turns = _exchange_turns(exchanges, int(state.get("turn") or 0))
        pinned = pinned_facts_from_slots(state.get("slots"))
        use_model = chat_model if ctx.model_summaries else None

        new_chunks: list[SummaryChunk] = []
        folded_messages: list[BaseMessage] = []
        start = 0
        after = before
        while after > ctx.window_tokens and start < foldable:
            end = min(start + ctx.fold_turns, foldable)
            chunk_messages = [m for exchange in exchanges[start:end] for m in exchange]
            if any(not m.id for m in chunk_messages):
                raise ValueError(
                    "compact_summary needs message ids to remove folded messages; add messages "
                    "through the graph (its add_messages reducer assigns ids)"
                )
            new_chunks.append(
                _summarize_chunk(
                    use_model,
                    chunk_messages,
                    pinned,
                    (turns[start], turns[end - 1]),
                    summary_tokens,
                    limits,
                )
            )
            folded_messages.extend(chunk_messages)
            start = end
            after = count_window_tokens(counter, [m for e in exchanges[start:] for m in e])

        summary_l1 = list(state.get("summary_l1") or []) + new_chunks
        summary_l2: LongSummary | None = state.get("summary_l2")
        l2_folded = False
        overflow = len(summary_l1) - ctx.l1_max_chunks
        if overflow > 0:
            # Without question tracking nothing can be said about what was answered.
            pending = (
                [
                    q["text"]
                    for q in state["pending_questions"]
                    if q.get("turn", 0) <= summary_l1[overflow - 1]["last_turn"]
                ]
                if state.get("pending_questions") is not None
                else None
            )
            summary_l2 = fold_into_long(
                summary_l2,
                summary_l1[:overflow],
                pinned,
                use_model,
                pending_questions=pending,
                limits=limits,
            )
            summary_l1 = summary_l1[overflow:]
            l2_folded = True

        methods = [c["method"] for c in new_chunks]
        return {
            "messages": [RemoveMessage(id=m.id) for m in folded_messages if m.id is not None],
            "summary_l1": summary_l1,
            "summary_l2": summary_l2,
            "compaction": {
                "ran": True,
                "folded_turns": [new_chunks[0]["first_turn"], new_chunks[-1]["last_turn"]],
                "method": "model" if all(m == "model" for m in methods) else "extractive",
                "chunk_methods": methods,
                "l2_folded": l2_folded,
                "window_tokens_before": before,
                "window_tokens_after": after,
            },
        }

    return compact_summary


def _summarize_chunk(
    chat_model: BaseChatModel | None,
    messages: Sequence[BaseMessage],
    pinned: dict[str, str],
    span: tuple[int, int],
    max_new_tokens: int,
    limits: SummaryLimits,
) -> SummaryChunk:
    first_turn, last_turn = span
    folded_text = "\n".join(message_text(m) for m in messages)
    if chat_model is not None:
        text = summarize_with_model(
            chat_model,
            messages,
            language_hint=detect_language(folded_text),
            pinned_facts=pinned,
            max_new_tokens=max_new_tokens,
            limits=limits,
        )
        if text and loses_pinned_fact(text, pinned, folded_text=folded_text):
            logger.info("model summary of turns %d-%d dropped a slot value", first_turn, last_turn)
        elif text and invents_identifiers(text, folded_text):
            logger.info("model summary of turns %d-%d invented a value", first_turn, last_turn)
        elif text:
            return SummaryChunk(
                first_turn=first_turn, last_turn=last_turn, text=text, method="model"
            )
    return SummaryChunk(
        first_turn=first_turn,
        last_turn=last_turn,
        text=extractive_line(messages, pinned, limits=limits),
        method="extractive",
    )
