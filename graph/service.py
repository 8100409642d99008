"""ChatService: the one facade the API, the CLI and embedding backends use to run turns.

It joins the thread operations (``graph.threads``) and the turn runner (``graph.turns``) over
one set of parts (``graph.core``), so that every client gets the same guarantees: one turn at
a time per thread, no partial turn saved on failure or cancellation, deleted threads refuse
late writes. ``graph.compose.open_service`` builds one from settings.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, BaseMessageChunk

from graph.remote_model import EngineStatus, RemoteChatModel
from graph.threads import ThreadOperations
from graph.turns import TurnRunner
from nodes.postprocess import ReplyStream, postprocess_reply
from nodes.text import message_text

__all__ = ["ChatService"]


class ChatService(ThreadOperations, TurnRunner):
    """Threads, turns and stateless completions over one graph, model, checkpointer and memory.

    Built from its parts as :class:`~graph.core.ServiceCore` is (the arguments are documented
    there), or from settings by :func:`graph.compose.open_service`.
    """

    async def complete(
        self, messages: list[BaseMessage], *, postprocess: bool = True, **generation: Any
    ) -> AIMessage:
        """Stateless completion over the given messages (OpenAI API without a thread).

        The content is post-processed exactly as ``stream_complete`` streams it, unless
        ``postprocess`` is false (a grammar's output, tokens whose logprobs are returned).
        """
        reply = await self.chat_model.ainvoke(messages, **generation)
        text = message_text(reply)
        return AIMessage(
            content=postprocess_reply(text) if postprocess else text,
            usage_metadata=getattr(reply, "usage_metadata", None),
            response_metadata=reply.response_metadata,
        )

    async def stream_complete(
        self, messages: list[BaseMessage], *, postprocess: bool = True, **generation: Any
    ) -> AsyncIterator[AIMessageChunk]:
        """Stateless streaming completion; closing the iterator stops generation.

        Each of the model's chunks comes through with its content replaced by the
        post-processed text that became certain with it, so the contents joined equal what
        ``complete`` returns; usage and finish reason stay on the chunks that carry them.
        """
        cancel = threading.Event()
        stream = cast(
            AsyncGenerator[BaseMessageChunk, None],
            self.chat_model.astream(messages, cancel_event=cancel, **generation),
        )
        post = ReplyStream() if postprocess else None
        finished = False
        try:
            async for raw in stream:
                chunk = cast(AIMessageChunk, raw)
                delta = post.feed(message_text(chunk)) if post else message_text(chunk)
                if chunk.chunk_position == "last":
                    # What was held back goes out with the model's closing chunk.
                    delta += post.finish() if post else ""
                    finished = True
                yield chunk.model_copy(update={"content": delta})
            if not finished and post and (rest := post.finish()):
                yield AIMessageChunk(content=rest)
        finally:
            cancel.set()
            await stream.aclose()

    async def engine_status(self) -> EngineStatus | None:
        """What the inference engine says, when generation runs there (None: in-process)."""
        if isinstance(self.chat_model, RemoteChatModel):
            return await self.chat_model.engine_status()
        return None

    async def ready(self, engine: EngineStatus | None = None) -> dict[str, bool]:
        """Readiness of the parts: model loaded (or its engine serving it), stores reachable.

        Args:
            engine: The engine's status when the caller asked for it already.
        """
        checks = {"model": self.chat_model is not None}
        if engine is None:
            engine = await self.engine_status()
        if engine is not None:
            checks["engine"] = engine.ok
        try:
            await self.registry.list(owner=None, limit=1, offset=0)
            checks["checkpointer"] = True
        except Exception:
            checks["checkpointer"] = False
        if self.memory is not None:
            try:
                await asyncio.to_thread(self.memory.count)
                checks["memory"] = True
            except Exception:
                checks["memory"] = False
        return checks
