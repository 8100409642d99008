"""Tool calls parsed from a reply in the Hermes/Qwen3 format, whole and streamed."""

from __future__ import annotations

import json

from nodes.tool_calls import ToolCallStream, parse_tool_calls


def test_calls_are_split_from_the_text_in_order() -> None:
    text = (
        "Checking both.\n<tool_call>\n"
        '{"name": "a", "arguments": {"x": 1}}\n</tool_call>\n<tool_call>\n'
        '{"name": "b", "arguments": "{\\"y\\": [2]}"}\n</tool_call>'
    )
    content, calls = parse_tool_calls(text)
    assert content == "Checking both."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("a", {"x": 1}),
        ("b", {"y": [2]}),
    ]
    assert len({c.id for c in calls}) == 2 and all(c.id.startswith("call_") for c in calls)


def test_a_block_that_is_not_a_call_stays_text() -> None:
    text = "<tool_call>\n{not json}\n</tool_call>"
    assert parse_tool_calls(text) == (text, [])
    assert parse_tool_calls('<tool_call>{"arguments": {}}</tool_call>')[1] == []


def test_an_unclosed_call_at_the_end_still_parses() -> None:
    _, [call] = parse_tool_calls('<tool_call>\n{"name": "a", "arguments": {}}')
    assert call.name == "a" and call.arguments == "{}"


def test_the_stream_holds_back_only_what_may_be_a_call() -> None:
    stream = ToolCallStream()
    out = [
        stream.feed(piece)
        for piece in [
            "Hi <",
            "tool",
            " there <tool_",
            "call>\n",
            '{"name": "f", ',
            '"arguments": {}}\n</tool_call>',
        ]
    ]
    assert out == ["Hi ", "", "<tool there ", "", "", ""]
    rest, [call] = stream.finish()
    assert rest == "" and call.name == "f"


def test_a_stream_without_calls_gives_everything_back() -> None:
    stream = ToolCallStream()
    shown = stream.feed("plain text <tool")
    rest, calls = stream.finish()
    assert shown + rest == "plain text <tool" and calls == []
