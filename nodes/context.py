"""Per-run knobs that travel in LangGraph's runtime context (never checkpointed).

Everything in ``Context`` is plain data, so LangGraph (and Studio) can describe it as a JSON
schema. Runtime objects of a run, such as the cancel flag, travel in
``config["configurable"]`` under a ``__``-prefixed key instead: never in the schema and never
copied into checkpoint metadata.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from langchain_core.runnables import RunnableConfig

__all__ = ["CANCEL_EVENT_KEY", "Context", "cancel_event_of", "with_cancel_event"]

CANCEL_EVENT_KEY = "__steadychat_cancel_event"
"""``config["configurable"]`` key of the run's ``threading.Event``: set to stop generation."""


def cancel_event_of(config: RunnableConfig | None) -> threading.Event | None:
    """The run's cancel flag, if the caller gave one (see ``with_cancel_event``)."""
    event = ((config or {}).get("configurable") or {}).get(CANCEL_EVENT_KEY)
    return event if isinstance(event, threading.Event) else None


def with_cancel_event(config: RunnableConfig, event: threading.Event) -> RunnableConfig:
    """A copy of ``config`` that carries ``event`` as the run's cancel flag."""
    configurable = {**(config.get("configurable") or {}), CANCEL_EVENT_KEY: event}
    return {**config, "configurable": configurable}


@dataclass(kw_only=True)
class Context:
    """Per-run configuration read by nodes as ``runtime.context`` (``None`` means defaults)."""

    user_id: str = "anonymous"
    """Owner of the thread; memory is filtered by it when ``cross_thread_memory`` is on."""
    profile: str = "general"
    """Generation profile: general, professional, creative, precise."""
    persona: str | None = None
    """System prompt variant: None picks the profile's; "customer_service" is one more."""
    system_prompt: str | None = None
    """Replaces the role part of the system prompt when given."""
    top_k: int = 8
    """Recalled memories per turn (each with its neighbours)."""
    score_floor: float = 0.0
    """Recalled memories scoring below this are dropped."""
    memory_neighbours: int = 1
    """Records that follow each recalled one in its thread (the reply to a recalled question)."""
    memory_neighbours_before: int = 0
    """Records just before each recalled one in its thread (what a recalled reply answers)."""
    memory_diversity: float = 0.3
    """Maximal marginal relevance: > 0 picks the ``top_k`` memories from twice as many
    candidates, each scored ``score / best score - memory_diversity * overlap`` (the Jaccard
    overlap of its terms with a memory already picked); 0 takes the best ``top_k``."""
    cross_thread_memory: bool = False
    """Recall from all of this user's threads, not just this one."""
    context_window: int = 8192
    """Tokens the model accepts (prompt + reply)."""
    max_new_tokens: int | None = None
    """Reply budget; None takes the profile's."""
    window_tokens: int = 2048
    """Token budget of the verbatim window; beyond it the oldest turns are folded into L1."""
    min_window_turns: int = 2
    """Exchanges always kept verbatim, whatever their size."""
    l1_max_chunks: int = 6
    """L1 lines kept before the oldest are folded into L2."""
    fold_turns: int = 4
    """Exchanges folded into one L1 line."""
    model_slot_pass: bool = False
    """Also ask the model for slots as JSON (off for the tiny model)."""
    model_summaries: bool = True
    """Summarize with the model (an extractive summary is the fallback either way)."""
    generation: dict[str, Any] = field(default_factory=dict)
    """Per-call overrides passed to the chat model: temperature, top_p, top_k,
    repetition_penalty, seed, stop, enable_thinking."""
    recorded_reply: str | None = None
    """Store this text as the assistant's reply instead of generating one (transcript replay)."""
    recorded_reply_timestamp: str | None = None
    """ISO-8601 time of the recorded reply; defaults to the user message's time when replaying."""
