"""Generation profiles (general, professional, creative, precise) and transformers kwargs."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

__all__ = ["PROFILES", "GenerationProfile", "get_profile", "resolve_generation"]


def _validate(**values: Any) -> None:
    temperature = values.get("temperature")
    if temperature is not None and (
        not _is_number(temperature) or not math.isfinite(temperature) or temperature < 0
    ):
        raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
    top_p = values.get("top_p")
    if top_p is not None and (not _is_number(top_p) or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    top_k = values.get("top_k")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0):
        raise ValueError(f"top_k must be an integer >= 0 (0 disables it), got {top_k!r}")
    penalty = values.get("repetition_penalty")
    if penalty is not None and (
        not _is_number(penalty) or not math.isfinite(penalty) or penalty <= 0
    ):
        raise ValueError(f"repetition_penalty must be a number > 0, got {penalty!r}")
    max_new = values.get("max_new_tokens")
    if max_new is not None and (
        not isinstance(max_new, int) or isinstance(max_new, bool) or max_new < 1
    ):
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True, kw_only=True)
class GenerationProfile:
    """Sampling settings for one kind of conversation; temperature 0 means greedy decoding."""

    name: str
    temperature: float
    top_p: float = 1.0
    top_k: int = 0
    """0 turns top-k filtering off."""
    repetition_penalty: float = 1.0
    max_new_tokens: int = 1024

    def __post_init__(self) -> None:
        _validate(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            repetition_penalty=self.repetition_penalty,
            max_new_tokens=self.max_new_tokens,
        )


PROFILES: dict[str, GenerationProfile] = {
    # Balanced everyday chat.
    "general": GenerationProfile(
        name="general",
        temperature=0.7,
        top_p=0.9,
        top_k=50,
        repetition_penalty=1.1,
        max_new_tokens=1024,
    ),
    # Customer service and expert answers: steadier, shorter, stronger repetition control.
    "professional": GenerationProfile(
        name="professional",
        temperature=0.3,
        top_p=0.8,
        top_k=40,
        repetition_penalty=1.2,
        max_new_tokens=512,
    ),
    # Writing: more varied wording, longer replies, repetition tolerated a little more.
    "creative": GenerationProfile(
        name="creative",
        temperature=0.9,
        top_p=0.95,
        top_k=100,
        repetition_penalty=1.05,
        max_new_tokens=2048,
    ),
    # Reproducible answers: greedy decoding.
    "precise": GenerationProfile(name="precise", temperature=0.0, max_new_tokens=1024),
}

_GREEDY_BELOW = 1e-5
"""Temperatures below this decode greedily: it is their limit, and dividing logits by a
vanishing temperature (1e-40) overflows to inf, which makes sampling crash."""

_OVERRIDES = ("temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens")


def get_profile(name: str) -> GenerationProfile:
    """Look a profile up by name.

    Args:
        name: ``general``, ``professional``, ``creative`` or ``precise``.

    Returns:
        The profile.

    Raises:
        ValueError: The name is not a known profile.
    """
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(
            f"unknown profile {name!r}; choose one of {', '.join(sorted(PROFILES))}"
        ) from None


def resolve_generation(
    profile: str | GenerationProfile = "general", **overrides: Any
) -> dict[str, Any]:
    """Turn a profile plus per-call overrides into ``generate()`` keyword arguments.

    Args:
        profile: A profile name or a ``GenerationProfile``.
        **overrides: ``temperature``, ``top_p``, ``top_k``, ``repetition_penalty`` or
            ``max_new_tokens``; ``None`` values keep the profile's.

    Returns:
        kwargs for ``transformers`` ``generate``: ``do_sample`` plus, when sampling,
        ``temperature``/``top_p``/``top_k``; ``repetition_penalty`` and ``max_new_tokens``.
        Temperature 0 (or below 1e-5) gives ``do_sample=False`` and no sampling knobs, so
        transformers neither raises nor warns.

    Raises:
        ValueError: Unknown profile or override, or an out-of-range value.
    """
    base = get_profile(profile) if isinstance(profile, str) else profile
    unknown = sorted(set(overrides) - set(_OVERRIDES))
    if unknown:
        raise ValueError(
            f"unknown generation setting(s) {', '.join(unknown)}; accepted: {', '.join(_OVERRIDES)}"
        )
    given = {key: value for key, value in overrides.items() if value is not None}
    _validate(**given)
    merged = replace(base, **given) if given else base
    kwargs: dict[str, Any] = {"max_new_tokens": merged.max_new_tokens}
    if merged.temperature < _GREEDY_BELOW:
        kwargs["do_sample"] = False
    else:
        kwargs["do_sample"] = True
        kwargs["temperature"] = float(merged.temperature)
        kwargs["top_p"] = float(merged.top_p)
        kwargs["top_k"] = merged.top_k
    if merged.repetition_penalty != 1.0:
        kwargs["repetition_penalty"] = float(merged.repetition_penalty)
    return kwargs
