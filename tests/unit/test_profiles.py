"""Generation profiles, their transformers kwargs, and the settings that choose them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from pydantic import ValidationError

from graph.settings import Settings
from nodes.profiles import PROFILES, get_profile, resolve_generation


@pytest.mark.parametrize(
    ("name", "temperature", "top_p", "top_k", "penalty", "max_new"),
    [
        ("general", 0.7, 0.9, 50, 1.1, 1024),
        ("professional", 0.3, 0.8, 40, 1.2, 512),
        ("creative", 0.9, 0.95, 100, 1.05, 2048),
    ],
)
def test_sampling_profiles_give_the_seed_values(
    name: str, temperature: float, top_p: float, top_k: int, penalty: float, max_new: int
) -> None:
    assert resolve_generation(name) == {
        "do_sample": True,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "repetition_penalty": penalty,
        "max_new_tokens": max_new,
    }


def test_precise_is_greedy_without_sampling_knobs() -> None:
    assert resolve_generation("precise") == {"do_sample": False, "max_new_tokens": 1024}


def test_temperature_zero_override_turns_any_profile_greedy() -> None:
    kwargs = resolve_generation("creative", temperature=0)
    assert kwargs["do_sample"] is False
    assert not {"temperature", "top_p", "top_k"} & set(kwargs)
    assert kwargs["repetition_penalty"] == 1.05
    assert kwargs["max_new_tokens"] == 2048


@pytest.mark.parametrize("temperature", [1e-40, 5e-324, 1e-9])
def test_a_vanishing_temperature_is_greedy_instead_of_overflowing(temperature: float) -> None:
    # Dividing logits by 1e-40 overflows to inf and sampling crashes; the limit is greedy.
    kwargs = resolve_generation("general", temperature=temperature)
    assert kwargs["do_sample"] is False
    assert "temperature" not in kwargs


def test_overrides_replace_only_what_is_given() -> None:
    kwargs = resolve_generation("professional", top_p=0.5, max_new_tokens=7, top_k=None)
    assert kwargs["top_p"] == 0.5
    assert kwargs["max_new_tokens"] == 7
    assert kwargs["top_k"] == 40
    assert kwargs["temperature"] == 0.3


def test_profiles_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        PROFILES["general"].temperature = 2.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"temperature": -0.1}, "temperature must be a number >= 0"),
        ({"temperature": float("nan")}, "temperature must be a number >= 0"),
        ({"top_p": 0}, r"top_p must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
        ({"top_k": -1}, "top_k must be an integer >= 0"),
        ({"top_k": 2.5}, "top_k must be an integer >= 0"),
        ({"repetition_penalty": 0}, "repetition_penalty must be a number > 0"),
        ({"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1"),
        ({"max_new_tokens": True}, "max_new_tokens must be an integer >= 1"),
        ({"beams": 4}, "unknown generation setting"),
    ],
)
def test_bad_values_raise_clear_value_errors(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_generation("general", **overrides)


def test_unknown_profile_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown profile 'chatty'.*creative, general"):
        get_profile("chatty")


def test_settings_defaults_and_resolved_paths(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.model == "Qwen/Qwen3-4B-Instruct-2507"
    assert settings.context_window == 8192
    assert settings.max_new_tokens is None
    assert settings.api_keys == []
    assert settings.resolved_checkpointer_url() == f"sqlite:///{tmp_path}/checkpoints.sqlite"
    assert settings.resolved_chroma_path() == tmp_path / "chroma"
    assert settings.tiny_model_dir() == tmp_path / "models" / "tiny"


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STEADYCHAT_MODEL", "tiny")
    monkeypatch.setenv("STEADYCHAT_API_KEYS", "alpha, beta")
    monkeypatch.setenv("STEADYCHAT_DEVICE", "CUDA:1")
    monkeypatch.setenv("STEADYCHAT_BUSY_POLICY", "reject")
    monkeypatch.setenv("STEADYCHAT_CHECKPOINTER_URL", "postgresql://u@localhost/db")
    settings = Settings()
    assert settings.model == "tiny"
    assert settings.api_keys == ["alpha", "beta"]
    assert settings.device == "cuda:1"
    assert settings.busy_policy == "reject"
    assert settings.resolved_checkpointer_url() == "postgresql://u@localhost/db"
    assert settings.data_dir == Path(str(tmp_path / "steadychat-data"))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("device", "tpu", "device must be auto, cpu, cuda, cuda:N or mps"),
        ("default_profile", "chatty", "unknown profile"),
        ("checkpointer_url", "mysql://x", "checkpointer_url must be"),
        ("dtype", "int8", "dtype"),
        ("context_window", 10, "context_window"),
    ],
)
def test_settings_reject_bad_values(field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**{field: value})


def test_a_reply_length_that_leaves_no_room_for_the_prompt_is_refused_at_start() -> None:
    # Otherwise every single turn fails later with a context-length error.
    with pytest.raises(ValidationError, match="max_new_tokens"):
        Settings(context_window=1024, max_new_tokens=1024)
    assert Settings(context_window=1024, max_new_tokens=512).max_new_tokens == 512


def test_every_setting_is_documented() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description, f"setting {name} has no description"
