"""The generate_reply node: assemble the prompt within budget, stream, post-process, account."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Generator, Mapping
from datetime import UTC, datetime
from typing import Any, cast

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.messages.ai import add_ai_message_chunks
from langchain_core.runnables import RunnableConfig
from langgraph.runtime import Runtime

from nodes.budget import Section, assemble_prompt
from nodes.context import Context, cancel_event_of
from nodes.dates import readable_date
from nodes.errors import ContextOverflowError, TurnCancelled
from nodes.postprocess import ReplyStream
from nodes.profiles import get_profile
from nodes.prompts import QUOTED_DATA_FENCE, system_prompt
from nodes.slots import render_slots
from nodes.state import ChatState, ContextAccount, LongSummary, Snippet
from nodes.text import message_text
from nodes.tracking import resolve_pending

log = logging.getLogger(__name__)

REPLY_DELTA = "reply_delta"
"""Key of the custom stream events the node writes (``stream_mode="custom"``): each
``{"reply_delta": text}`` is the next piece of the post-processed reply, and joined in order
they are exactly the reply the turn saves."""

HEADINGS = {
    "summary_l2": "Long-range summary of earlier conversation",
    "summary_l1": "Recent summary (older turns, one line each)",
}
"""Sections of the system message: they change only when a compaction runs."""

TURN_HEADINGS = {
    "state": "What you know about the user and this conversation",
    "memories": "Recalled from earlier in the conversation (may be relevant)",
}
"""Sections that change every turn: they come after the window, before the user's text, so
that everything before them is the previous turn's prompt token for token."""

TURN_FRAME = (
    "[Context for this turn, from steadychat, not written by the user]",
    "[End of context. The user's message:]",
)

QUOTE_OPEN, QUOTE_CLOSE = QUOTED_DATA_FENCE


def user_text_of(prompt_text: str) -> str:
    """The user's own text in the last message of a prompt (without the turn's context)."""
    marker = TURN_FRAME[1] + "\n\n"
    return prompt_text.split(marker, 1)[1] if prompt_text.startswith(TURN_FRAME[0]) else prompt_text


FENCES = {"memories": QUOTED_DATA_FENCE}


def _is_memo(name: str) -> bool:
    return name.startswith("memo:")


def _state_block(state: ChatState) -> str:
    lines: list[str] = []
    core = {k: v for k, v in (state.get("slots") or {}).items() if not _is_memo(k)}
    slots = render_slots(core)
    if slots:
        lines.append(slots)
    if state.get("topic"):
        lines.append(f"Current topic: {state['topic']}")
    entities = state.get("entities") or []
    if entities:
        lines.append("Mentioned: " + ", ".join(entities[-10:]))
    pending = state.get("pending_questions") or []
    earlier = [q for q in pending if q["turn"] < state.get("turn", 0)]
    if earlier:
        lines.append("Still unanswered from earlier turns:")
        lines.extend(f"- (turn {q['turn']}) {q['text']}" for q in earlier[-5:])
    return "\n".join(lines)


def _long_summary_text(l2: LongSummary) -> str:
    parts = [f"(turns {l2['first_turn']}-{l2['last_turn']})"]
    if l2.get("narrative"):
        parts.append(l2["narrative"])
    if l2.get("topics"):
        parts.append("Topics: " + "; ".join(l2["topics"]))
    if l2.get("facts"):
        parts.append("Facts: " + "; ".join(l2["facts"]))
    if l2.get("resolved"):
        parts.append("Resolved: " + "; ".join(l2["resolved"]))
    if l2.get("open_questions"):
        parts.append("Open: " + "; ".join(l2["open_questions"]))
    return "\n".join(parts)


def _snippet_text(s: Snippet) -> str:
    # The date as a reader says it ("Mon 8 May 2023"), so "when" questions read off the line;
    # relative dates inside the text were resolved when it was remembered.
    when = ""
    stamp = s.get("timestamp")
    if stamp:
        try:
            day = datetime.fromisoformat(stamp).date()
            when = f"{day:%a} {readable_date(day)}, "
        except ValueError:
            when = f"{stamp[:10]}, "
    return f"- [{when}turn {s['turn']}, {s['role']}] {quote_safe(s['text'])}"


def quote_safe(text: str) -> str:
    """Recalled text as it may stand inside the quoted-data fence: it cannot close the fence
    (nor open another) and it stays on the snippet's own line."""
    for marker in (QUOTE_OPEN, QUOTE_CLOSE):
        text = text.replace(marker, marker.replace("<", "‹").replace(">", "›"))
    return " ".join(text.splitlines())


def memory_labels(recalled: list[Snippet]) -> list[str]:
    """A distinct section label per recalled snippet, in the order given.

    ``memory:t<turn>:<role>`` (facts add their slot: ``memory:t3:fact:email``); a label that
    would repeat (same turn and role from another thread) becomes ``memory:<snippet id>``, so
    the account says exactly which snippet was dropped or kept.
    """
    labels: list[str] = []
    used: set[str] = set()
    for snip in recalled:
        label = f"memory:t{snip['turn']}:{snip['role']}"
        if snip["role"] == "fact":
            label += ":" + str(snip["id"]).rsplit(":", 1)[-1]
        if label in used:
            label = f"memory:{snip['id']}"
        while label in used:
            label += "+"
        used.add(label)
        labels.append(label)
    return labels


def build_sections(state: ChatState) -> list[Section]:
    """The optional parts of the system message, each with its drop priority."""
    sections: list[Section] = []
    block = _state_block(state)
    if block:
        sections.append(Section(kind="state", label="state", text=block, priority=60))
    # Memos ("remember that ...") can pile up: each is its own section, so that when the state
    # no longer fits, the oldest memos go first (after recalled memories and summaries, before
    # the recent window) instead of the whole state block.
    memos = sorted(
        ((name, slot) for name, slot in (state.get("slots") or {}).items() if _is_memo(name)),
        key=lambda item: item[1].get("turn", 0),
    )
    for i, (name, slot) in enumerate(memos):
        text = render_slots({name: slot})
        if text:
            sections.append(
                Section(
                    kind="state",
                    label=f"slot:{name}",
                    text=text,
                    priority=51 + min(8, i * 9 // max(1, len(memos))),
                )
            )
    l2 = state.get("summary_l2")
    if l2:
        sections.append(
            Section(kind="summary_l2", label="summary_l2", text=_long_summary_text(l2), priority=40)
        )
    l1 = state.get("summary_l1") or []
    for i, chunk in enumerate(l1):
        # Older lines go first: priority 20..39 in age order.
        sections.append(
            Section(
                kind="summary_l1",
                label=f"summary_l1:t{chunk['first_turn']}-{chunk['last_turn']}",
                text=f"- (turns {chunk['first_turn']}-{chunk['last_turn']}) {chunk['text']}",
                priority=20 + min(19, i * 20 // max(1, len(l1))),
            )
        )
    recalled = list(state.get("recalled") or [])
    labelled = sorted(
        zip(recalled, memory_labels(recalled), strict=True), key=lambda p: p[0]["score"]
    )
    for i, (snip, label) in enumerate(labelled):
        sections.append(
            Section(
                kind="memories",
                label=label,
                text=_snippet_text(snip),
                priority=10 + min(9, i),
            )
        )
    return sections


def _prompt_counter(chat_model: BaseChatModel, generation: dict[str, Any]) -> BaseChatModel:
    """The model as this call renders its prompt, for counting it exactly.

    A per-call ``enable_thinking`` changes the chat template's output (an empty think block),
    so the prompt is counted with a copy of the model that has the same setting.
    """
    thinking = generation.get("enable_thinking")
    if thinking is None or "enable_thinking" not in type(chat_model).model_fields:
        return chat_model
    if getattr(chat_model, "enable_thinking", None) == thinking:
        return chat_model
    return chat_model.model_copy(update={"enable_thinking": thinking})


def profile_reply_tokens(profile: str) -> int:
    """The reply budget a generation profile sets."""
    return get_profile(profile).max_new_tokens


def _stream_reply(
    chat_model: BaseChatModel,
    messages: list[BaseMessage],
    kwargs: dict[str, Any],
    post: ReplyStream,
    release: Callable[[str], None],
    cancel: threading.Event | None,
) -> AIMessageChunk:
    """Stream the model's reply through the post-processor; return the chunks merged.

    The merged chunk carries what the model reported (usage, finish reason). A cancelled turn
    stops reading and closes the stream, which ends generation at the next token.
    """
    chunks: list[AIMessageChunk] = []
    stream = cast(Generator[AIMessageChunk, None, None], chat_model.stream(messages, **kwargs))
    with contextlib.closing(stream):
        for chunk in stream:
            chunks.append(chunk)
            release(post.feed(message_text(chunk)))
            if cancel is not None and cancel.is_set():
                break
    if not chunks:
        return AIMessageChunk(content="")
    return add_ai_message_chunks(chunks[0], *chunks[1:])


def make_generate_reply(
    chat_model: BaseChatModel,
    *,
    profile_max_new_tokens: Callable[[str], int] = profile_reply_tokens,
) -> Callable[[ChatState, Runtime[Context], RunnableConfig], dict[str, Any]]:
    """Build the generate_reply node.

    Args:
        chat_model: The chat model (one instance serves every thread).
        profile_max_new_tokens: Reply budget of a generation profile (the profile's own
            ``max_new_tokens`` unless a caller decides otherwise).
    """

    def generate_reply(
        state: ChatState, runtime: Runtime[Context], config: RunnableConfig
    ) -> dict[str, Any]:
        """Generate the assistant's reply for the current turn and record the context account."""
        ctx = runtime.context or Context()
        cancel_event = cancel_event_of(config)
        turn = state.get("turn", 0)
        messages: list[BaseMessage] = list(state.get("messages") or [])
        if not messages or not isinstance(messages[-1], HumanMessage):
            raise ValueError("generate_reply needs the user's message last in the window")
        user = messages[-1]
        window = messages[:-1]

        context_window = min(
            ctx.context_window, getattr(chat_model, "context_window", None) or ctx.context_window
        )
        if ctx.max_new_tokens:
            max_new = ctx.max_new_tokens  # asked for explicitly: honoured or refused, not cut
        else:
            # A profile's reply length (up to 2048) must not crowd out the prompt when the
            # deployment runs a small context window: it gets half of the window at most.
            max_new = min(profile_max_new_tokens(ctx.profile), max(1, context_window // 2))
        budget = context_window - max_new
        if budget <= 0:
            raise ContextOverflowError(
                f"a reply of {max_new} tokens leaves no room for the prompt in the context "
                f"window of {context_window} tokens; ask for fewer reply tokens"
            )
        rules = system_prompt(ctx.profile, persona=ctx.persona, role=ctx.system_prompt)
        assembled = assemble_prompt(
            _prompt_counter(chat_model, ctx.generation),
            rules=rules,
            sections=build_sections(state),
            headings=HEADINGS,
            window=window,
            user=HumanMessage(content=user.content),
            budget=budget,
            turn_headings=TURN_HEADINGS,
            fences=FENCES,
            turn_frame=TURN_FRAME,
        )

        shown: list[str] = []

        def release(delta: str) -> None:
            # Each certain piece goes out at once; joined, they are exactly the saved reply.
            if delta:
                shown.append(delta)
                runtime.stream_writer({REPLY_DELTA: delta})

        post = ReplyStream()
        if ctx.recorded_reply is not None:
            release(post.feed(ctx.recorded_reply))
            finish_reason, usage = "stop", {}
        else:
            kwargs: dict[str, Any] = {"profile": ctx.profile, "max_new_tokens": max_new}
            kwargs.update(ctx.generation)
            if cancel_event is not None:
                kwargs["cancel_event"] = cancel_event
            reply = _stream_reply(
                chat_model, assembled.messages, kwargs, post, release, cancel_event
            )
            finish_reason = (reply.response_metadata or {}).get("finish_reason", "stop")
            meta: Mapping[str, Any] = reply.usage_metadata or {}
            usage = {
                "prompt_tokens": int(meta.get("input_tokens", assembled.total)),
                "completion_tokens": int(meta.get("output_tokens", 0)),
                "total_tokens": int(meta.get("total_tokens", 0)),
                # Prompt tokens whose KV the engine reused (the thread's unchanged prefix).
                "cached_tokens": int((meta.get("input_token_details") or {}).get("cache_read", 0)),
            }
        if cancel_event is not None and cancel_event.is_set():
            raise TurnCancelled("the turn was cancelled during generation")
        release(post.finish())
        text = "".join(shown)

        kept = set(assembled.kept_labels)
        recalled = list(state.get("recalled") or [])
        recalled_used = [
            s for s, label in zip(recalled, memory_labels(recalled), strict=True) if label in kept
        ]
        account: ContextAccount = {
            "turn": turn,
            "budget": budget,
            "sections": assembled.sections,
            "total": assembled.total,
            "dropped": assembled.dropped,
            "recalled": recalled_used,
            "compaction": state.get("compaction") or {"ran": False},
            "profile": ctx.profile,
            "usage": usage,
        }
        if ctx.recorded_reply is not None:
            stamp = ctx.recorded_reply_timestamp or user.additional_kwargs.get("timestamp")
        else:
            stamp = None
        ai = AIMessage(
            content=text,
            additional_kwargs={"turn": turn, "timestamp": stamp or datetime.now(UTC).isoformat()},
            response_metadata={"finish_reason": finish_reason},
        )
        pending = resolve_pending(state.get("pending_questions") or [], text, finish_reason, turn)
        return {"messages": [ai], "context_account": account, "pending_questions": pending}

    return generate_reply
