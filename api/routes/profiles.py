"""The generation profiles a request may name, with their presets (the web page reads them)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import ConfigDep
from api.schemas import ProfileList, ProfilePublic
from nodes.profiles import PROFILES

router = APIRouter(prefix="/profiles", tags=["profiles"])


# No API key: the list describes the server, like the page that reads it before a key is given.
@router.get("", response_model=ProfileList, summary="List the generation profiles")
async def list_profiles(config: ConfigDep) -> ProfileList:
    """List the generation profiles with their presets, and the default one."""
    return ProfileList(
        default=config.default_profile,
        data=[ProfilePublic.model_validate(p, from_attributes=True) for p in PROFILES.values()],
    )
