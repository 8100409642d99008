"""Each text of a turn is tokenized once: the window is not counted again for every check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import AutoModelForCausalLM, AutoTokenizer

from graph.chat_model import QwenChatModel
from graph.compose import open_service
from graph.settings import Settings
from graph.token_memo import TokenMemo


class CountingTokenizer:
    """A tokenizer that records every text it is asked to tokenize."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.inputs: list[str] = []

    def __call__(self, text: Any, *args: Any, **kwargs: Any) -> Any:
        self.inputs.extend([text] if isinstance(text, str) else list(text))
        return self._inner(text, *args, **kwargs)

    def encode(self, text: Any, *args: Any, **kwargs: Any) -> Any:
        self.inputs.extend([text] if isinstance(text, str) else list(text))
        return self._inner.encode(text, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def test_a_window_message_is_tokenized_at_most_once_per_turn(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    chat_model = QwenChatModel.from_model(model, tokenizer, model_id="tiny", max_tokens=8)
    counting = CountingTokenizer(tokenizer)
    chat_model.tokenizer = counting
    settings = Settings(
        data_dir=tmp_path,
        embedder="hash",
        checkpointer_url="memory",
        context_window=4096,
        max_new_tokens=8,
        window_tokens=3000,
        default_profile="precise",
    )
    said: list[str] = []
    worst: dict[str, int] = {}
    async with open_service(settings, chat_model=chat_model) as service:
        thread = await service.create_thread(owner="u")
        for i in range(6):
            text = f"Message {i}: the parcel for order {7000 + i} came late, where is it now?"
            counting.inputs.clear()
            result = await service.run_turn(thread.thread_id, text, owner="u")
            assert not ((result.context_account or {}).get("compaction") or {}).get("ran")
            # Every earlier user message is in this turn's window (no compaction ran): it is
            # tokenized as a window message (alone, or templated as a user turn). A recalled
            # memory that quotes it is a text of its own, counted with the turn's parts.
            for old in said:
                seen = sum(piece == old or f"user\n{old}" in piece for piece in counting.inputs)
                worst[old] = max(worst.get(old, 0), seen)
            said.append(text)
    assert len(worst) == 5
    assert max(worst.values()) <= 1, worst


def test_memoized_ids_are_the_tokenizers_own(tiny_model_path: Path) -> None:
    import threading

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    memo = TokenMemo(tokenizer, threading.RLock(), max_pieces=3)
    conversations = [
        [{"role": "system", "content": "Be brief.\n\n# Notes\n- 订单 42"}],
        [
            {"role": "user", "content": "  spaces first and <|im_end|> inside"},
            {"role": "assistant", "content": "<think>\nx\n</think>\n\nok  "},
            {"role": "user", "content": "\n\nnewlines first, café"},
        ],
    ]
    for _ in range(2):  # the second pass reads the memo (and evicts: it holds 3 pieces)
        for messages in conversations:
            text = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
            expected = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert memo.token_ids(text) == expected


def test_the_memo_holds_a_bounded_number_of_tokens_however_long_the_pieces(
    tiny_model_path: Path,
) -> None:
    """A long-running worker sees a new, longer system message every turn; the memo's memory
    stays within its token bound instead of growing with the pieces."""
    import threading

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    memo = TokenMemo(tokenizer, threading.RLock(), max_pieces=1000, max_tokens=1200)
    notes: list[str] = []
    for turn in range(60):
        notes.append(f"- note {turn}: the parcel for order {7000 + turn} went to depot {turn % 7}")
        messages = [
            {"role": "system", "content": "Be brief.\n\n# Notes\n" + "\n".join(notes)},
            {"role": "user", "content": f"where is order {7000 + turn}?"},
        ]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert memo.token_ids(text) == tokenizer(text, add_special_tokens=False)["input_ids"]
        assert memo.tokens <= 1200
    # The system message alone passed 1200 tokens late in the thread: too long to keep, it is
    # tokenized each time, and the short pieces are still memoized.
    assert len(tokenizer("\n".join(notes))["input_ids"]) > 1200
    assert 0 < memo.pieces < 1000
    short = "user\nwhere is order 7059?"
    assert memo.token_ids(short) == tokenizer(short, add_special_tokens=False)["input_ids"]


def test_a_memo_with_no_room_is_refused(tiny_model_path: Path) -> None:
    import threading

    import pytest

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    with pytest.raises(ValueError, match="room"):
        TokenMemo(tokenizer, threading.RLock(), max_tokens=0)
