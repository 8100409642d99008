"""GET /profiles: the generation profiles and their presets, as clients and the page read them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.app import create_app
from graph.compose import open_service
from graph.settings import Settings
from tests.fakes import ScriptedChatModel


@asynccontextmanager
async def open_client(
    tmp_path: Path, model: ScriptedChatModel, **settings: Any
) -> AsyncIterator[httpx.AsyncClient]:
    config = Settings(checkpointer_url="memory", data_dir=tmp_path, embedder="hash", **settings)
    async with open_service(config, chat_model=model, embedder="hash") as service:
        transport = httpx.ASGITransport(app=create_app(service, settings=config))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


async def test_profiles_list_the_presets_of_the_readme(tmp_path: Path) -> None:
    async with open_client(tmp_path, ScriptedChatModel()) as client:
        response = await client.get("/profiles")
    assert response.status_code == 200
    listing = response.json()
    assert listing["default"] == "general"
    by_name = {profile["name"]: profile for profile in listing["data"]}
    assert list(by_name) == ["general", "professional", "creative", "precise"]
    assert by_name["professional"] == {
        "name": "professional",
        "temperature": 0.3,
        "top_p": 0.8,
        "top_k": 40,
        "repetition_penalty": 1.2,
        "max_new_tokens": 512,
    }
    assert by_name["precise"]["temperature"] == 0.0


async def test_profiles_need_no_key_and_name_the_deployment_default(tmp_path: Path) -> None:
    async with open_client(
        tmp_path, ScriptedChatModel(), api_keys=["k1"], default_profile="precise"
    ) as client:
        listing = await client.get("/profiles")
        threads = await client.get("/threads")
    assert listing.status_code == 200
    assert listing.json()["default"] == "precise"
    assert threads.status_code == 401


async def test_every_listed_profile_is_accepted_by_both_apis(tmp_path: Path) -> None:
    model = ScriptedChatModel()
    async with open_client(tmp_path, model) as client:
        names = [profile["name"] for profile in (await client.get("/profiles")).json()["data"]]
        thread_id = (await client.post("/threads")).json()["thread_id"]
        for name in names:
            rest = await client.post(
                f"/threads/{thread_id}/messages", json={"content": "hi", "profile": name}
            )
            assert rest.status_code == 200, rest.text
            v1 = await client.post(
                "/v1/chat/completions",
                json={"messages": [{"role": "user", "content": "hi"}], "profile": name},
            )
            assert v1.status_code == 200, v1.text
    assert [call["kwargs"]["profile"] for call in model.history] == [
        name for name in names for _ in range(2)
    ]


async def test_openapi_documents_the_profiles_route(tmp_path: Path) -> None:
    async with open_client(tmp_path, ScriptedChatModel()) as client:
        document = (await client.get("/openapi.json")).json()
    schema = document["paths"]["/profiles"]["get"]["responses"]["200"]["content"]
    assert schema["application/json"]["schema"]["$ref"].endswith("/ProfileList")
    listing = document["components"]["schemas"]["ProfileList"]
    assert {"default", "data"} <= set(listing["properties"])


@pytest.mark.parametrize("path", ["/threads/t/messages", "/v1/chat/completions"])
async def test_a_profile_the_list_lacks_is_refused(tmp_path: Path, path: str) -> None:
    body: dict[str, Any] = {"profile": "chatty"}
    if path.startswith("/v1"):
        body["messages"] = [{"role": "user", "content": "hi"}]
    else:
        body["content"] = "hi"
    async with open_client(tmp_path, ScriptedChatModel()) as client:
        response = await client.post(path, json=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "profile"
