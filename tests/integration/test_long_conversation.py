"""200+ turns on one thread: state, prompt and storage stay bounded; facts survive compaction."""

from __future__ import annotations

from pathlib import Path

from langchain_core.messages import BaseMessage, HumanMessage

from bench.conversation import scripted_reply, scripted_user_turns
from graph.compose import open_service
from graph.settings import Settings
from tests.fakes import ScriptedChatModel

TURNS = 210


def _db_bytes(db: Path) -> int:
    wal = db.with_name(db.name + "-wal")
    return db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def _responder(messages: list[BaseMessage]) -> str:
    user = next(m for m in reversed(messages) if isinstance(m, HumanMessage))
    return scripted_reply(str(user.content), len(messages))


async def test_two_hundred_turns_stay_bounded_and_keep_facts(tmp_path: Path) -> None:
    model = ScriptedChatModel(responder=_responder)
    settings = Settings(
        data_dir=tmp_path,
        embedder="hash",
        window_tokens=600,
        context_window=4096,
        max_new_tokens=256,
        keep_checkpoints=10,
    )
    turns = scripted_user_turns(TURNS)
    prompt_tokens: dict[int, int] = {}
    window_sizes: dict[int, int] = {}
    db = Path(settings.resolved_checkpointer_url().removeprefix("sqlite:///"))
    sizes: dict[int, int] = {}
    async with open_service(settings, chat_model=model) as service:
        await service.create_thread(thread_id="long")
        for i, text in enumerate(turns, 1):
            result = await service.run_turn("long", text)
            assert result.turn == i
            prompt_tokens[i] = result.context_account["total"]
            if i in (50, 100, 150, 200):
                view = await service.get_thread("long")
                window_sizes[i] = len(view.window)
                sizes[i] = _db_bytes(db)
        view = await service.get_thread("long")
        history = await service.history("long", limit=100)

    # The window is folded away: messages in state stay bounded however long the thread.
    assert max(window_sizes.values()) <= 30
    assert window_sizes[200] <= window_sizes[50] + 4
    # Prompt tokens stay within the budget and do not grow with the conversation.
    budget = 4096 - 256
    assert max(prompt_tokens.values()) <= budget
    assert max(prompt_tokens[t] for t in range(150, 201)) <= 1.5 * max(
        prompt_tokens[t] for t in range(20, 51)
    )
    # Summaries took over the folded turns.
    assert view.summary_l1 or view.summary_l2
    assert (view.context_account or {}).get("compaction") is not None
    # Slots survive compaction; the correction wins and the old value stays in history.
    slots = view.slots
    assert slots["name"]["value"] == "Alice Martin"
    assert slots["email"]["value"] == "alice.m@example.org"
    old = [h["value"] for h in slots["email"]["history"]]
    assert "alice.martin@example.com" in old
    assert slots["email"]["history"][-1]["turn"] == 2
    assert "20240815CN001" in slots["order_id"]["value"]
    # ... and reach the model at the last turn, long after those turns left the window.
    last_prompt = model.history[-1]["messages"]
    prompt = "\n".join(str(m.content) for m in last_prompt)
    assert "Alice Martin" in prompt and "alice.m@example.org" in prompt
    # Old checkpoints are pruned, so storage does not grow with the square of the turns.
    assert len(history) <= 10
    assert sizes[200] < 2 * sizes[100]
