"""System prompts: three parts, variants per profile and persona."""

import pytest

from nodes.profiles import PROFILES
from nodes.prompts import PERSONAS, PROFILE_PROMPTS, system_prompt


@pytest.mark.parametrize("profile", ["general", "professional", "creative", "precise"])
def test_every_profile_has_role_rules_and_format(profile: str) -> None:
    text = system_prompt(profile)
    assert text.index("# Role") < text.index("# Rules") < text.index("# Format")


def test_customer_service_persona_differs_from_general() -> None:
    cs = system_prompt("general", persona="customer_service")
    assert "customer-service" in cs
    assert cs != system_prompt("general")


def test_custom_role_replaces_only_the_role_part() -> None:
    text = system_prompt("professional", role="You are the help desk of ACME.")
    assert "You are the help desk of ACME." in text
    assert PROFILE_PROMPTS["professional"].role not in text
    assert "# Rules" in text


def test_unknown_persona_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown persona"):
        system_prompt("general", persona="pirate")


def test_profile_prompts_name_profiles_and_personas_are_not_profiles() -> None:
    # The profile list lives in nodes.profiles; a prompt keyed by any other name is never used.
    assert set(PROFILE_PROMPTS) <= set(PROFILES)
    assert not set(PERSONAS) & set(PROFILES)
