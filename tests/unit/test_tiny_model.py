"""The offline tiny model: what it is built from, determinism, reuse, and its chat template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoTokenizer

from graph.tiny_model import build_tiny_model, is_complete_model_dir


def test_builds_a_loadable_qwen3_with_chatml_tokens(tiny_model_path: Path) -> None:
    assert is_complete_model_dir(tiny_model_path)
    config = AutoConfig.from_pretrained(tiny_model_path)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    assert config.model_type == "qwen3"
    assert config.head_dim == 16
    assert config.max_position_embeddings == 8192
    assert config.vocab_size == len(tokenizer)
    assert tokenizer.eos_token == "<|im_end|>"
    assert config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    for token in ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>"]:
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, f"{token} is not a single token"


@pytest.mark.parametrize(
    "text",
    ["Order 12345 arrives tomorrow.", "你好，我的订单号是 A-778。", "mixed 混合 text ✓ émoji 🚀"],
)
def test_text_round_trips_through_the_tokenizer(tiny_model_path: Path, text: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_common_chinese_is_merged_not_just_bytes(tiny_model_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    # Three UTF-8 bytes per character: fewer tokens than bytes means merges were learned.
    assert len(tokenizer("你好订单", add_special_tokens=False)["input_ids"]) < 12


def test_chat_template_renders_like_qwen3(tiny_model_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "<think>greet</think>\n\nHello!"},
        {"role": "user", "content": "你好"},
    ]
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\n你好<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    no_think = tokenizer.apply_chat_template(
        messages[:2], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert no_think.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    without_prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False)
    assert without_prompt.endswith("Hi<|im_end|>\n")


def test_template_refuses_unknown_roles(tiny_model_path: Path) -> None:
    from jinja2 import TemplateError

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    with pytest.raises(TemplateError, match="only system, user, assistant and tool"):
        tokenizer.apply_chat_template([{"role": "function", "content": "42"}], tokenize=False)


def test_template_renders_tools_as_qwen3_does(tiny_model_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    tool = {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}
    call = {"type": "function", "function": {"name": "add", "arguments": {"a": 1}}}
    messages = [
        {"role": "system", "content": "Be exact."},
        {"role": "user", "content": "1+1?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "2"},
    ]
    prompt = tokenizer.apply_chat_template(
        messages, tools=[tool], tokenize=False, add_generation_prompt=True
    )
    assert prompt.startswith("<|im_start|>system\nBe exact.\n\n# Tools\n")
    assert "<tools>\n" + json.dumps(tool) + "\n</tools>" in prompt
    assert prompt.count("<|im_start|>system") == 1
    assert prompt.endswith(
        '<|im_start|>assistant\n<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n'
        "</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n2\n</tool_response>"
        "<|im_end|>\n<|im_start|>assistant\n"
    )


def test_an_older_build_gets_the_current_template(tmp_path: Path) -> None:
    from graph.tiny_model import QWEN3_STYLE_CHAT_TEMPLATE

    folder = build_tiny_model(tmp_path / "old")
    (folder / "chat_template.jinja").write_text("{{ messages }}")
    build_tiny_model(folder)
    assert (folder / "chat_template.jinja").read_text() == QWEN3_STYLE_CHAT_TEMPLATE


def test_same_seed_same_files_other_seed_other_weights(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    again = build_tiny_model(tmp_path / "again", seed=0)
    other = build_tiny_model(tmp_path / "other", seed=1)
    for name in ["model.safetensors", "tokenizer.json", "chat_template.jinja"]:
        assert (again / name).read_bytes() == (tiny_model_path / name).read_bytes(), name
    assert (other / "model.safetensors").read_bytes() != (again / "model.safetensors").read_bytes()
    assert json.loads((other / "steadychat_tiny.json").read_text()) == {"seed": 1}


def test_existing_model_is_reused(tmp_path: Path) -> None:
    first = build_tiny_model(tmp_path / "m")
    weights = first / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert build_tiny_model(tmp_path / "m", seed=5) == first
    assert weights.stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "staging folder left"


def test_refuses_to_overwrite_an_unrelated_folder(tmp_path: Path) -> None:
    target = tmp_path / "busy"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a complete model folder"):
        build_tiny_model(target)
    assert (target / "notes.txt").read_text() == "mine"
