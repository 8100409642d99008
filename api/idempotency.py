"""Idempotency-Key support shared by every POST that runs a turn or creates something.

A retried request with the same key and the same body gets the first result back instead of
running again. The same key with a different body is refused with 422 and code
``idempotency_key_reused`` (the status the IETF Idempotency-Key draft recommends). Keys are
scoped per owner and per route, kept in memory in a bounded LRU with a time to live. Only
successful results are remembered: after an error a retry runs again. A retry that arrives
while the first request is still running waits for it and shares its result.

With a shared store (PostgreSQL, when the service runs on it) the keys hold across API
processes: a retry that lands on another process gets the first result, and a duplicate sent
to another process while the first still runs waits for it there. Results travel as JSON and
are rebuilt as the route's own answer type.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

from fastapi import Request
from pydantic import TypeAdapter

from api.errors import ApiError

__all__ = [
    "IDEMPOTENCY_HEADER",
    "REPLAY_HEADER",
    "Claim",
    "IdempotencyCache",
    "SharedKeys",
    "claim_for_request",
    "fingerprint",
    "run_once",
]

IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAY_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
MAX_KEYS = 10_000
"""Keys an app remembers at most; the least recently used go first."""
KEY_TTL_S = 24 * 3600.0
"""Seconds a key is remembered: a day outlasts any client's retries."""

T = TypeVar("T")

log = logging.getLogger(__name__)

Slot = tuple[str, str, str]


class SharedKeyState(Protocol):
    """What a shared store found for a key (``store.idempotency.KeyState``)."""

    @property
    def status(self) -> Literal["run", "done", "mismatch"]:
        """``run`` (this caller runs), ``done`` (``result`` is remembered) or ``mismatch``."""
        ...

    @property
    def result(self) -> Any:
        """The remembered result, as JSON."""
        ...


class SharedKeys(Protocol):
    """Keys shared by every API process (``store.idempotency.PostgresIdempotencyStore``)."""

    async def claim(
        self, slot: Slot, fingerprint: str, *, thread: str | None = None
    ) -> SharedKeyState:
        """Take the key, or find its result (waiting while another process runs it)."""
        ...

    async def finish(self, slot: Slot, result: Any) -> None:
        """Store the JSON result of a claimed key."""
        ...

    async def release(self, slot: Slot) -> None:
        """Forget a claimed key whose request failed."""
        ...

    async def forget_thread(self, owner: str, thread_id: str) -> None:
        """Drop every key of the owner's thread."""
        ...


_ADAPTERS: dict[type[Any], TypeAdapter[Any]] = {}


def _adapter(cls: type[Any]) -> TypeAdapter[Any]:
    if cls not in _ADAPTERS:
        _ADAPTERS[cls] = TypeAdapter(cls)
    return _ADAPTERS[cls]


def encode_result(result: Any) -> dict[str, Any]:
    """A remembered result as JSON with the name of its type (a dict, a model, a dataclass)."""
    cls = type(result)
    if cls is dict:
        return {"type": "dict", "data": result}
    return {
        "type": f"{cls.__module__}:{cls.__qualname__}",
        "data": _adapter(cls).dump_python(result, mode="json"),
    }


def decode_result(blob: dict[str, Any]) -> Any:
    """The result ``encode_result`` stored; only the API's own answer types are rebuilt."""
    name = blob["type"]
    if name == "dict":
        return dict(blob["data"])
    module, _, qualname = name.partition(":")
    if not module.startswith("api.") or "." in qualname:
        raise ValueError(f"not an answer type of the API: {name!r}")
    cls = getattr(importlib.import_module(module), qualname)
    return _adapter(cls).validate_python(blob["data"])


def fingerprint(payload: Any) -> str:
    """A stable hash of a JSON-able request body (key order does not matter).

    Args:
        payload: The parsed request body.

    Returns:
        A hex digest.
    """
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class _Entry:
    fingerprint: str
    expires_at: float
    thread: str | None = None
    done: asyncio.Future[Any] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@dataclass
class Claim:
    """The outcome of presenting a key: a result to replay, or the right to run once.

    When ``replayed`` is False the caller runs the request, then calls ``finish(result)``
    on success or ``release()`` on failure (so that a retry may run again).
    """

    cache: IdempotencyCache | None
    slot: tuple[str, str, str] | None
    replayed: bool = False
    result: Any = None
    _settled: bool = False

    async def finish(self, result: Any) -> None:
        """Remember ``result`` for retries with the same key and body (shared: never change it)."""
        if self.cache is not None and self.slot is not None and not self._settled:
            self._settled = True
            self.cache._finish(self.slot, result)
            await self.cache._share_finish(self.slot, result)

    async def release(self) -> None:
        """Forget the key (the request failed); waiting retries run on their own."""
        if self.cache is not None and self.slot is not None and not self._settled:
            self._settled = True
            self.cache._release(self.slot)
            await self.cache._share_release(self.slot)


class IdempotencyCache:
    """In-memory, bounded, expiring store of idempotent results.

    Args:
        max_entries: Keys kept at most; the least recently used go first.
        ttl_s: Seconds a key is remembered.
        clock: Monotonic clock (injectable for tests).
        shared: A store that every API process sees (set when the service runs on
            PostgreSQL); None keeps keys in this process only.
    """

    def __init__(
        self,
        *,
        max_entries: int = MAX_KEYS,
        ttl_s: float = KEY_TTL_S,
        clock: Callable[[], float] = time.monotonic,
        shared: SharedKeys | None = None,
    ) -> None:
        if max_entries < 1 or ttl_s <= 0:
            raise ValueError("max_entries must be >= 1 and ttl_s > 0")
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str, str], _Entry] = OrderedDict()
        self.shared = shared

    def __len__(self) -> int:
        return len(self._entries)

    def _evict(self) -> None:
        now = self._clock()
        for slot in [s for s, e in self._entries.items() if e.expires_at <= now]:
            self._drop(slot)
        while len(self._entries) > self.max_entries:
            oldest = next(iter(self._entries))
            self._drop(oldest)

    async def forget_thread(self, *, owner: str, thread_id: str) -> None:
        """Forget every remembered result of a thread (it was deleted or reset).

        A result holds the thread's text (the reply), so it must not outlive the thread: the
        keys go here and, on PostgreSQL, from the shared table. A retry of such a key after
        the deletion runs again.
        """
        for slot, entry in list(self._entries.items()):
            if slot[0] == owner and entry.thread == thread_id:
                self._drop(slot)
        if self.shared is not None:
            await self.shared.forget_thread(owner, thread_id)

    def _drop(self, slot: tuple[str, str, str]) -> None:
        entry = self._entries.pop(slot, None)
        if entry is not None and not entry.done.done():
            entry.done.cancel()

    async def claim(
        self, *, owner: str, scope: str, key: str, body_hash: str, thread: str | None = None
    ) -> Claim:
        """Present a key: replay a remembered result, wait for one in flight, or run.

        Args:
            owner: The caller's owner id (keys of different owners never meet).
            scope: The route the key belongs to ("POST /threads/{id}/messages").
            key: The client's Idempotency-Key.
            body_hash: ``fingerprint`` of the request body.
            thread: The thread the request runs a turn of (its deletion forgets the key).

        Returns:
            A Claim.

        Raises:
            ApiError: 422 when the key was used with a different body.
        """
        slot = (owner, scope, key)
        while True:
            self._evict()
            entry = self._entries.get(slot)
            if entry is None:
                self._entries[slot] = _Entry(body_hash, self._clock() + self.ttl_s, thread)
                self._evict()
                if self.shared is None:
                    return Claim(self, slot)
                return await self._claim_shared(slot, body_hash, thread)
            if entry.fingerprint != body_hash:
                raise _reused()
            self._entries.move_to_end(slot)
            if entry.done.done() and not entry.done.cancelled():
                return Claim(None, None, replayed=True, result=entry.done.result())
            try:
                # shield: a retry that gives up must not cancel the first request's future.
                result = await asyncio.shield(entry.done)
            except asyncio.CancelledError:
                if entry.done.cancelled():
                    continue  # the first request failed: try to run this one ourselves
                raise
            return Claim(None, None, replayed=True, result=result)

    async def _claim_shared(self, slot: Slot, body_hash: str, thread: str | None) -> Claim:
        """This process runs the key unless another process has (or is running) it."""
        assert self.shared is not None
        try:
            state = await self.shared.claim(slot, body_hash, thread=thread)
            if state.status == "mismatch":
                raise _reused()
            result = decode_result(state.result) if state.status == "done" else None
        except BaseException:
            self._drop(slot)  # local duplicates waiting on this claim try again themselves
            raise
        if state.status == "done":
            self._finish(slot, result)
            return Claim(None, None, replayed=True, result=result)
        return Claim(self, slot)

    async def _share_finish(self, slot: Slot, result: Any) -> None:
        if self.shared is None:
            return
        try:
            await self.shared.finish(slot, encode_result(result))
        except Exception:
            # The answer stands; a retry on another process may run once more.
            log.warning("could not share an idempotent result", exc_info=True)
            await self._share_release(slot)

    async def _share_release(self, slot: Slot) -> None:
        if self.shared is None:
            return
        try:
            await self.shared.release(slot)
        except Exception:
            log.warning("could not release an idempotency key", exc_info=True)

    def _finish(self, slot: tuple[str, str, str], result: Any) -> None:
        entry = self._entries.get(slot)
        if entry is not None and not entry.done.done():
            entry.done.set_result(result)
            entry.expires_at = self._clock() + self.ttl_s

    def _release(self, slot: tuple[str, str, str]) -> None:
        self._drop(slot)


def _reused() -> ApiError:
    return ApiError(
        422,
        "This Idempotency-Key was already used with a different request body.",
        param=IDEMPOTENCY_HEADER,
        code="idempotency_key_reused",
    )


def _read_key(request: Request) -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise ApiError(
            400,
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable characters.",
            param=IDEMPOTENCY_HEADER,
            code="invalid_idempotency_key",
        )
    return key


async def claim_for_request(request: Request, *, owner: str, payload: Any) -> Claim:
    """Claim the request's Idempotency-Key, if it has one.

    Without the header the returned claim runs the request and remembers nothing.

    Args:
        request: The incoming request (its header, route and app's cache are used).
        owner: The caller's owner id.
        payload: The JSON-able request body that the key must match.

    Returns:
        A Claim.
    """
    key = _read_key(request)
    if key is None:
        return Claim(None, None)
    cache: IdempotencyCache = request.app.state.idempotency
    route = request.scope.get("route")
    scope = f"{request.method} {getattr(route, 'path', request.url.path)}:{request.url.path}"
    # The thread the result belongs to, so that deleting the thread forgets the result.
    thread = request.path_params.get("thread_id") or request.headers.get("x-thread-id")
    return await cache.claim(
        owner=owner, scope=scope, key=key, body_hash=fingerprint(payload), thread=thread
    )


async def run_once(
    request: Request,
    *,
    owner: str,
    payload: Any,
    run: Callable[[], Awaitable[T]],
) -> tuple[T, bool]:
    """Run ``run`` at most once per Idempotency-Key (when the request carries one).

    Args:
        request: The incoming request.
        owner: The caller's owner id.
        payload: The JSON-able request body.
        run: Produces the result; it must be JSON-able or immutable, as it is shared.

    Returns:
        The result and whether it was replayed from an earlier request.
    """
    claim = await claim_for_request(request, owner=owner, payload=payload)
    if claim.replayed:
        return claim.result, True
    try:
        result = await run()
    except BaseException:
        await claim.release()
        raise
    await claim.finish(result)
    return result, False
