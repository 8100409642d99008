"""`steadychat replay` and `steadychat state`: load conversations into threads and inspect them."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO, cast

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatResult

from graph.compose import open_service
from graph.errors import ServiceError, ThreadNotFoundError
from graph.service import ChatService
from graph.settings import Settings
from nodes.memory import MemoryStore


@dataclass(frozen=True, kw_only=True)
class ReplayStep:
    """One user turn to replay, with the recorded reply when the transcript has one."""

    text: str
    timestamp: datetime | None = None
    recorded_reply: str | None = None
    recorded_timestamp: datetime | None = None


def parse_transcript(items: Any) -> list[ReplayStep]:
    """Turn a JSON list into replay steps.

    Plain strings are user turns the model answers. Objects ``{role, content, timestamp?}`` are a
    recorded transcript: a user object followed by an assistant object is stored as given.

    Raises:
        ValueError: The JSON is not such a list (the message names the bad item).
    """
    if not isinstance(items, list):
        raise ValueError("the replay file must hold a JSON list")
    steps: list[ReplayStep] = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            if not item.strip():
                raise ValueError(f"item {i}: the message is empty")
            steps.append(ReplayStep(text=item))
            continue
        if not isinstance(item, dict) or not isinstance(item.get("content"), str):
            raise ValueError(f"item {i}: expected a string or an object with string 'content'")
        role = item.get("role", "user")
        if role == "user" and not item["content"].strip():
            raise ValueError(f"item {i}: the message is empty")
        stamp = item.get("timestamp")
        when = datetime.fromisoformat(stamp) if isinstance(stamp, str) else None
        if role == "user":
            steps.append(ReplayStep(text=item["content"], timestamp=when))
        elif role == "assistant":
            if not steps or steps[-1].recorded_reply is not None:
                raise ValueError(f"item {i}: an assistant turn must follow a user turn")
            steps[-1] = dataclasses.replace(
                steps[-1], recorded_reply=item["content"], recorded_timestamp=when
            )
        else:
            raise ValueError(f"item {i}: unknown role {role!r} (user or assistant)")
    return steps


async def replay(
    service: ChatService,
    thread_id: str,
    steps: Sequence[ReplayStep],
    *,
    owner: str = "anonymous",
    progress: TextIO | None = None,
) -> int:
    """Run ``steps`` on ``thread_id`` (created when missing); returns the last turn number.

    With ``progress``, a tqdm bar there shows the turns done, the prompt size and whether the
    window was compacted.
    """
    from tqdm.auto import tqdm

    await service.ensure_thread(thread_id, owner=owner)
    turn = 0
    bar = tqdm(
        total=len(steps),
        desc=f"replaying into {thread_id}",
        unit="turn",
        file=progress,
        disable=progress is None,
    )
    try:
        for step in steps:
            ctx = service.context(
                recorded_reply=step.recorded_reply,
                recorded_reply_timestamp=(
                    step.recorded_timestamp.isoformat() if step.recorded_timestamp else None
                ),
            )
            result = await service.run_turn(
                thread_id, step.text, owner=owner, context=ctx, timestamp=step.timestamp
            )
            turn = result.turn
            account = result.context_account
            bar.set_postfix_str(
                f"turn {turn}: prompt {account.get('total', 0)} tokens, "
                f"{'compacted' if (account.get('compaction') or {}).get('ran') else 'window'}"
            )
            bar.update()
    finally:
        bar.close()
    return turn


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


async def thread_state(service: ChatService, thread_id: str) -> dict[str, Any]:
    """The thread's state as JSON-ready data (slots, summaries, window, last account)."""
    view = await service.get_thread(thread_id)
    state: dict[str, Any] = _jsonable(view)
    return state


def run_replay(settings: Settings, path: Path, thread_id: str, *, out: TextIO = sys.stderr) -> int:
    """CLI body of `steadychat replay`; returns the process exit code."""
    try:
        steps = parse_transcript(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        print(f"steadychat replay: {exc}", file=sys.stderr)
        return 2

    async def main() -> int:
        async with open_service(settings) as service:
            try:
                turn = await replay(service, thread_id, steps, progress=out)
            except ServiceError as exc:
                # A bad thread id, a deleted thread, a turn too long for the context window:
                # the turns before it are kept; the user gets the reason, not a traceback.
                out.write("\n")
                print(f"steadychat replay: {exc}", file=sys.stderr)
                return 1
        print(f"replayed {len(steps)} turns into thread {thread_id} (now at turn {turn})")
        return 0

    return asyncio.run(main())


class _NoModel(BaseChatModel):
    """Stands in for the chat model where a command only reads checkpoints."""

    @property
    def _llm_type(self) -> str:
        return "none"

    def _generate(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> ChatResult:
        raise RuntimeError("this command reads checkpoints only; no model is loaded")


class _NoMemory:
    """Stands in for vector memory where a command only reads checkpoints."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError("this command reads checkpoints only; no vector memory is open")


def run_state(settings: Settings, thread_id: str) -> int:
    """CLI body of `steadychat state`; prints the thread's state as JSON.

    Only the checkpointer and the thread registry are opened: no model, embedder or Chroma.
    """

    async def main() -> int:
        reader = open_service(
            settings, chat_model=_NoModel(), memory=cast(MemoryStore, _NoMemory())
        )
        async with reader as service:
            try:
                data = await thread_state(service, thread_id)
            except ThreadNotFoundError:
                print(f"steadychat state: no thread {thread_id!r}", file=sys.stderr)
                return 1
        print(json.dumps(data, ensure_ascii=False, indent=2))
        return 0

    return asyncio.run(main())
