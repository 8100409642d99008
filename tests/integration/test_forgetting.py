"""Forgetting for real: after delete, reset or a cleared slot no byte of it stays on disk."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from langchain_core.messages import BaseMessage, HumanMessage

from api.app import create_app
from graph.compose import open_service
from graph.settings import Settings
from nodes.generate_reply import user_text_of
from tests.fakes import ScriptedChatModel


def _echo(messages: list[BaseMessage]) -> str:
    # The reply repeats the user turn, so assistant records carry the canary too.
    last = next(m for m in reversed(messages) if isinstance(m, HumanMessage))
    # The user's own words: the turn's context before them (slots, memories) is not echoed.
    return f"Noted: {user_text_of(str(last.content))}"


def _canary(label: str) -> str:
    return f"{label}{uuid.uuid4().hex}"


@asynccontextmanager
async def _client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    model = ScriptedChatModel(responder=_echo)
    async with open_service(settings, chat_model=model, embedder="hash") as service:
        transport = httpx.ASGITransport(app=create_app(service, settings=settings))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield client


async def _ok(response: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return response.json() if response.content else {}


async def _planted_thread(
    client: httpx.AsyncClient, canary: str, *, title: str, metadata: bool = True, turns: int = 3
) -> str:
    """A thread whose messages, slots (and title, metadata when asked) carry the canary."""
    meta = {"note": canary} if metadata else {"note": "kept"}
    created = await _ok(await client.post("/threads", json={"title": title, "metadata": meta}), 201)
    thread = str(created["thread_id"])
    for i in range(turns):
        await _ok(
            await client.post(
                f"/threads/{thread}/messages",
                json={"content": f"Please remember the code {canary} for step {i}."},
                # The remembered result of a key holds the reply: it must go with the thread.
                headers={"Idempotency-Key": f"step-{i}-{uuid.uuid4().hex}"},
            )
        )
    await _ok(
        await client.patch(f"/threads/{thread}/slots", json={"slots": {"name": f"N{canary}"}})
    )
    return thread


async def _exercise(client: httpx.AsyncClient) -> dict[str, str]:
    """Delete one thread, reset one, clear a slot of a third; keep a fourth. The canaries."""
    canaries = {k: _canary(k) for k in ("deleted", "reset", "slot", "kept")}
    deleted = await _planted_thread(
        client, canaries["deleted"], title=f"Title {canaries['deleted']}"
    )
    # A reset keeps the thread, its title and metadata (no canary there); the rest goes.
    reset = await _planted_thread(client, canaries["reset"], title="reset me", metadata=False)
    kept = await _planted_thread(client, canaries["kept"], title=f"Title {canaries['kept']}")

    slot_thread = str((await _ok(await client.post("/threads", json={}), 201))["thread_id"])
    await _ok(await client.post(f"/threads/{slot_thread}/messages", json={"content": "hello"}))
    first, second = f"{canaries['slot']}a", f"{canaries['slot']}b"
    for value in (first, second):
        await _ok(
            await client.patch(f"/threads/{slot_thread}/slots", json={"slots": {"email": value}})
        )
    await _ok(await client.post(f"/threads/{slot_thread}/messages", json={"content": "next"}))

    await _ok(await client.delete(f"/threads/{deleted}"), 204)
    await _ok(await client.post(f"/threads/{reset}/reset"))
    cleared = await _ok(
        await client.patch(f"/threads/{slot_thread}/slots", json={"slots": {"email": None}})
    )
    assert cleared["slots"]["email"]["value"] is None
    assert cleared["slots"]["email"]["history"] == []

    assert (await client.get(f"/threads/{deleted}")).status_code == 404
    remembered = _remembered_results(client)
    assert canaries["kept"] in remembered
    assert canaries["deleted"] not in remembered and canaries["reset"] not in remembered
    after_reset = await _ok(await client.get(f"/threads/{reset}"))
    assert after_reset["slots"] == {} and after_reset["window"] == []
    detail = await _ok(await client.get(f"/threads/{kept}"))
    assert detail["slots"]["name"]["value"] == f"N{canaries['kept']}"
    return canaries


def _remembered_results(client: httpx.AsyncClient) -> str:
    """Every Idempotency-Key result this process remembers, as one text."""
    transport = client._transport
    assert isinstance(transport, httpx.ASGITransport)
    cache = transport.app.state.idempotency  # type: ignore[attr-defined]
    return repr([entry.done.result() for entry in cache._entries.values() if entry.done.done()])


def _files_holding(root: Path, needle: str) -> dict[str, int]:
    """Files under ``root`` whose raw bytes contain ``needle`` (UTF-8), with the count."""
    found = {}
    for path in root.rglob("*"):
        if path.is_file():
            count = path.read_bytes().count(needle.encode())
            if count:
                found[str(path.relative_to(root))] = count
    return found


def _queue_rows_holding(chroma: Path, needle: str) -> int:
    with sqlite3.connect(chroma / "chroma.sqlite3") as conn:
        row = conn.execute(
            "SELECT COUNT(*) FROM embeddings_queue WHERE metadata LIKE ?", (f"%{needle}%",)
        ).fetchone()
    return int(row[0])


def _assert_forgotten(data_dir: Path, canaries: dict[str, str]) -> None:
    kept = _files_holding(data_dir, canaries["kept"])
    # The check can fail: what was kept is found, in the checkpoints and in Chroma.
    assert "checkpoints.sqlite" in kept or "postgres" in str(data_dir), kept
    assert "chroma/chroma.sqlite3" in kept, kept
    for name in ("deleted", "reset", "slot"):
        assert _files_holding(data_dir, canaries[name]) == {}, name
        assert _queue_rows_holding(data_dir / "chroma", canaries[name]) == 0, name


async def test_delete_reset_and_clear_leave_no_byte_in_the_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    settings = Settings(data_dir=data_dir, embedder="hash")
    async with _client(settings) as client:
        canaries = await _exercise(client)
    # The server is stopped: every file is as it stays.
    assert (data_dir / "checkpoints.sqlite").exists()
    _assert_forgotten(data_dir, canaries)


def _rows_holding(dsn: str, needle: str) -> dict[str, int]:
    """Rows of every table of the database that hold ``needle`` as text or as bytes."""
    hex_needle = needle.encode().hex()
    found = {}
    with psycopg.connect(dsn) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_tables "
                "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
            )
        ]
        for table in tables:
            # A row as text shows bytea columns in hex.
            row = conn.execute(
                f"SELECT COUNT(*) FROM {table} AS t WHERE t::text LIKE %s OR t::text LIKE %s",
                (f"%{needle}%", f"%{hex_needle}%"),
            ).fetchone()
            if row and row[0]:
                found[table] = int(row[0])
    return found


@pytest.mark.slow
@pytest.mark.postgres
async def test_delete_reset_and_clear_leave_no_row_in_postgres(
    tmp_path: Path, postgres_db: str
) -> None:
    data_dir = tmp_path / "postgres-data"
    settings = Settings(data_dir=data_dir, embedder="hash", checkpointer_url=postgres_db)
    async with _client(settings) as client:
        canaries = await _exercise(client)
    kept = _rows_holding(postgres_db, canaries["kept"])
    assert {"public.checkpoints", "public.steadychat_threads"} <= kept.keys(), kept
    for name in ("deleted", "reset", "slot"):
        assert _rows_holding(postgres_db, canaries[name]) == {}, name
    _assert_forgotten(data_dir, canaries)
