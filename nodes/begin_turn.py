"""The begin_turn node: number the turn, stamp the user message, measure the window."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, HumanMessage
from langgraph.runtime import Runtime

from nodes.context import Context
from nodes.state import ChatState


def make_begin_turn(
    chat_model: BaseChatModel,
) -> Callable[[ChatState, Runtime[Context]], dict[str, Any]]:
    """Build the begin_turn node (the chat model only counts tokens here)."""

    def begin_turn(state: ChatState, runtime: Runtime[Context]) -> dict[str, Any]:
        """Increment the turn counter and stamp the new user message with turn and timestamp."""
        messages = list(state.get("messages") or [])
        if not messages or not isinstance(messages[-1], HumanMessage):
            raise ValueError("a turn starts with a user message (HumanMessage) as the last input")
        user = messages[-1]
        turn = int(state.get("turn") or 0) + 1
        stamp = user.additional_kwargs.get("timestamp") or datetime.now(UTC).isoformat()
        stamped = user.model_copy(
            update={
                "additional_kwargs": {**user.additional_kwargs, "turn": turn, "timestamp": stamp}
            }
        )
        window_tokens = chat_model.get_num_tokens_from_messages(list[BaseMessage](messages))
        return {
            "messages": [stamped],
            "turn": turn,
            "window_tokens": window_tokens,
            "recalled": [],
            "compaction": {"ran": False},
        }

    return begin_turn
