"""A thread's prompt prefix is reused from one turn to the next, until a compaction."""

from __future__ import annotations

from pathlib import Path

from graph.chat_model import QwenChatModel
from graph.compose import open_service
from graph.settings import Settings


async def test_turns_reuse_the_thread_prefix_until_a_compaction(
    tmp_path: Path, tiny_chat_model: QwenChatModel
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        embedder="hash",
        checkpointer_url="memory",
        context_window=2048,
        max_new_tokens=12,
        window_tokens=260,
        default_profile="precise",
    )
    turns: list[tuple[bool, int, int]] = []  # (compaction ran, cached, prompt tokens)
    async with open_service(settings, chat_model=tiny_chat_model) as service:
        thread = await service.create_thread(owner="u")
        for i in range(14):
            result = await service.run_turn(
                thread.thread_id,
                f"Turn {i}: my order {1000 + i} was late and I would like to know why.",
                owner="u",
            )
            account = result.context_account or {}
            ran = bool((account.get("compaction") or {}).get("ran"))
            usage = result.usage
            assert usage["cached_tokens"] == account["usage"]["cached_tokens"]
            turns.append((ran, int(usage["cached_tokens"]), int(usage["prompt_tokens"])))
            if len(turns) > 3 and any(r for r, _, _ in turns[2:-1]) and not turns[-1][0]:
                break
    # The second turn extends the first: its prefix comes from the cache.
    assert turns[1][1] > 0
    # A compaction rewrites the summaries and the window: less of the prompt is reused...
    index = next(i for i, (ran, _, _) in enumerate(turns) if ran and i >= 2)
    assert turns[index][1] < turns[index - 1][1]
    # ...and the next turn, which extends the compacted prompt, reuses it again.
    assert index + 1 < len(turns), turns
    assert turns[index + 1][1] > turns[index][1]
