"""One rule for thread ids wherever they come in, and log lines no client value can forge."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from api.app import create_app
from api.logging import SafeFormatter, configure_logging, escape_control
from graph.compose import open_service
from graph.core import THREAD_ID_RULE, valid_thread_id
from graph.errors import ServiceError
from graph.settings import Settings
from tests.fakes import ScriptedChatModel

BAD_IDS = ["a b", "..", ".", "x" * 129, "abc\n2026-01-01 ERROR forged", "tab\there", "é", "a/b"]
GOOD_IDS = ["customer-42", "a.b:c_d", "_x", "0" * 128]


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(checkpointer_url="memory", data_dir=tmp_path, embedder="hash")
    async with open_service(settings, chat_model=ScriptedChatModel(), embedder="hash") as service:
        transport = httpx.ASGITransport(app=create_app(service, settings=settings))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            yield c


@pytest.mark.parametrize("thread_id", BAD_IDS)
async def test_a_bad_id_is_refused_alike_in_the_path_and_the_header(
    client: httpx.AsyncClient, thread_id: str
) -> None:
    answers = [
        (
            await client.post(
                "/v1/chat/completions",
                json={"model": "steadychat", "messages": [{"role": "user", "content": "hi"}]},
                headers={"X-Thread-Id": thread_id.encode("utf-8")},
            ),
            "X-Thread-Id",
        )
    ]
    # ".", ".." and "a/b" cannot be one path segment: a client resolves them to other routes.
    if thread_id not in (".", "..", "a/b"):
        answers.append((await client.get(f"/threads/{quote(thread_id)}"), "thread_id"))
    for response, param in answers:
        assert response.status_code == 400, (param, response.text)
        error = response.json()["error"]
        assert error["param"] == param
        assert THREAD_ID_RULE in error["message"]
    assert (await client.get("/threads")).json()["total"] == 0


@pytest.mark.parametrize("thread_id", GOOD_IDS)
async def test_a_good_id_is_taken_by_the_header_and_then_the_path(
    client: httpx.AsyncClient, thread_id: str
) -> None:
    response = await client.post(
        "/v1/chat/completions",
        json={"model": "steadychat", "messages": [{"role": "user", "content": "hi"}]},
        headers={"X-Thread-Id": thread_id},
    )
    assert response.status_code == 200, response.text
    assert (await client.get(f"/threads/{thread_id}")).status_code == 200


def test_the_rule_is_one_function() -> None:
    assert all(valid_thread_id(t) for t in GOOD_IDS)
    assert not any(valid_thread_id(t) for t in BAD_IDS)
    assert not valid_thread_id(None) and not valid_thread_id("")


async def test_the_service_refuses_a_bad_id_with_the_rule(tmp_path: Path) -> None:
    settings = Settings(checkpointer_url="memory", data_dir=tmp_path, embedder="hash")
    async with open_service(settings, chat_model=ScriptedChatModel(), embedder="hash") as service:
        for bad in ("two words", "line\nbreak"):
            with pytest.raises(ServiceError, match=re.escape(THREAD_ID_RULE)):
                await service.create_thread(thread_id=bad)
            with pytest.raises(ServiceError, match=re.escape(THREAD_ID_RULE)):
                await service.ensure_thread(bad)


_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ steadychat\.")


async def test_a_forged_line_in_a_path_stays_on_its_own_line(client: httpx.AsyncClient) -> None:
    configure_logging("INFO")
    handler = next(h for h in logging.getLogger("steadychat").handlers if h.formatter)
    assert isinstance(handler, logging.StreamHandler)
    stream = io.StringIO()
    previous = handler.setStream(stream)
    try:
        forged = "abc%0A2026-01-01%2000:00:00,000%20ERROR%20steadychat.api%20forged"
        response = await client.get(f"/threads/{forged}")
        logging.getLogger("steadychat.test").info("value %s", "one\ntwo\x1b[31m")
    finally:
        handler.setStream(previous)
    assert response.status_code == 400
    lines = stream.getvalue().splitlines()
    assert lines and all(_LINE.match(line) for line in lines), lines
    assert any("abc\\n2026-01-01" in line for line in lines)
    assert any("one\\ntwo\\x1b[31m" in line for line in lines)


def test_every_field_and_the_traceback_are_escaped() -> None:
    assert escape_control("a\r\nb\x00c\u2028d 中文") == "a\\r\\nb\\x00c\\u2028d 中文"
    formatter = SafeFormatter("%(levelname)s %(thread_id)s %(message)s")
    try:
        raise ValueError("bad\nERROR forged")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, "f", 1, "msg %s", ("a\nb",), None)
        import sys

        record.exc_info = sys.exc_info()
    record.thread_id = "t\n1"
    text = formatter.format(record)
    first, *rest = text.split("\n")
    assert first == "ERROR t\\n1 msg a\\nb"
    assert rest and all(line.startswith("    ") for line in rest)
    assert "bad\\nERROR forged" in text
