"""One continuous-batching engine per loaded model: transformers' ContinuousBatchingManager.

Every thread's generation goes through the same manager, so concurrent turns decode together
in one batch, over a paged KV cache whose completed blocks are kept (hashed by content) for
later requests: a prompt that extends an earlier one reuses its KV (``allow_block_sharing``).
This module only starts, feeds and stops the manager and routes its outputs to each request;
scheduling, batching, the cache and sampling are the engine's own.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import uuid
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["BatchedEngine", "EngineRequest", "EngineSettings", "engine_supports"]

log = logging.getLogger(__name__)

_ATTENTION = ("sdpa", "eager", "paged|eager")

_ENGINES: weakref.WeakKeyDictionary[Any, BatchedEngine] = weakref.WeakKeyDictionary()
_ENGINES_LOCK = threading.Lock()


@dataclass(frozen=True, kw_only=True)
class EngineSettings:
    """Sizes of the engine's paged KV cache and batches."""

    page_size: int = 16
    """Tokens per KV block: prefix reuse is counted in whole blocks, so smaller reuses more."""
    cache_tokens: int | None = None
    """KV cache capacity in tokens (None: four context windows on CPU and MPS, the engine's
    own memory-based size on CUDA)."""
    max_batch_tokens: int = 1024
    """Tokens per forward pass (decode steps of every request plus prefill chunks)."""


def engine_supports(model: Any) -> str | None:
    """Why the engine cannot run ``model`` (None when it can)."""
    if not hasattr(model, "init_continuous_batching"):
        return "this transformers model has no continuous-batching support"
    attention = getattr(getattr(model, "config", None), "_attn_implementation", None) or ""
    if attention not in _ATTENTION and not attention.startswith("flash_attention"):
        return f"attention {attention!r} does not run in the engine (sdpa, eager or flash do)"
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        return "quantized (bitsandbytes) weights are not run by the engine"
    return None


class EngineRequest:
    """One request in the engine: its generated tokens as they come, and a way to cancel it."""

    def __init__(self, engine: BatchedEngine, request_id: str) -> None:
        self._engine = engine
        self.request_id = request_id
        self._queue: queue.Queue[Any] = queue.Queue()
        self._seen = 0
        self.finished = False

    @property
    def cached_tokens(self) -> int:
        """Prompt tokens whose KV the engine reused from its prefix cache."""
        return self._engine.prefix_hit(self.request_id)

    def tokens(self, events: Sequence[threading.Event] = ()) -> Iterator[list[int]]:
        """Yield each batch of new tokens until the request finishes or an event is set.

        Raises:
            RuntimeError: The engine failed the request or stopped under it.
        """
        while not self.finished:
            if any(event.is_set() for event in events):
                return
            try:
                output = self._queue.get(timeout=0.05)
            except queue.Empty:
                continue
            if isinstance(output, BaseException):
                self.finished = True
                raise RuntimeError(f"generation failed: {output}") from output
            if output.error is not None:
                self.finished = True
                raise RuntimeError(f"generation failed: {output.error}")
            tokens = list(output.generated_tokens)
            new, self._seen = tokens[self._seen :], max(self._seen, len(tokens))
            if output.is_finished():
                self.finished = True
                self._engine.lifespans.append(tuple(output.lifespan))
            if new:
                yield new

    def cancel(self) -> None:
        """Stop generating this request (its blocks return to the cache)."""
        if not self.finished:
            self.finished = True
            self._engine.cancel(self.request_id)
        self._engine.forget(self.request_id)


class BatchedEngine:
    """A lazily started ContinuousBatchingManager over one model, shared by every caller.

    Args:
        model: A transformers causal LM (``sdpa``, ``eager`` or flash attention).
        context_window: The longest prompt plus reply a request may have, in tokens.
        settings: Cache and batch sizes.
    """

    def __init__(
        self, model: Any, *, context_window: int, settings: EngineSettings | None = None
    ) -> None:
        self._model = model
        self._context_window = context_window
        self._settings = settings or EngineSettings()
        self._lock = threading.Lock()
        self._manager: Any = None
        self._dispatcher: threading.Thread | None = None
        self._requests: dict[str, EngineRequest] = {}
        self._hits: dict[str, int] = {}
        self.requests_started = 0
        """Requests submitted over the engine's life (observability and tests)."""
        self.peak_concurrency = 0
        """Most requests that were in the engine at the same time."""
        self.lifespans: collections.deque[tuple[float, float]] = collections.deque(maxlen=256)
        """(start, end) of the last finished requests, in ``time.perf_counter`` seconds: when
        the engine began computing each and when it finished it."""

    @classmethod
    def for_model(
        cls, model: Any, *, context_window: int, settings: EngineSettings | None = None
    ) -> BatchedEngine:
        """The one engine of ``model``, created on first use (every chat model over the same
        loaded weights shares it, so they decode in one batch and share one KV cache)."""
        with _ENGINES_LOCK:
            engine = _ENGINES.get(model)
            if engine is None:
                engine = cls(model, context_window=context_window, settings=settings)
                _ENGINES[model] = engine
            else:
                engine._context_window = max(engine._context_window, context_window)
            return engine

    @property
    def running(self) -> bool:
        """Whether the manager's generation loop is alive."""
        return self._manager is not None and bool(self._manager.is_running())

    # ------------------------------------------------------------------ lifecycle
    def _generation_config(self) -> Any:
        from transformers import GenerationConfig

        base = self._model.generation_config
        # Sampling knobs set here (not 1.0, not None) make the engine build its per-request
        # temperature, top-k and top-p processors; every request passes its own values.
        return GenerationConfig(
            do_sample=True,
            temperature=0.7,
            top_k=50,
            top_p=0.9,
            max_new_tokens=256,
            eos_token_id=base.eos_token_id,
            pad_token_id=base.pad_token_id,
            bos_token_id=base.bos_token_id,
        )

    def _batching_config(self) -> Any:
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        settings = self._settings
        tokens = settings.cache_tokens
        device = str(getattr(self._model, "device", "cpu"))
        if tokens is None and not device.startswith("cuda"):
            # On CPU the engine would size its cache from RAM (60% of it): far too much.
            tokens = 4 * self._context_window
        num_blocks = None
        if tokens is not None:
            # At least one whole request (prompt + reply) must fit, or it could never run.
            tokens = max(tokens, self._context_window + settings.page_size)
            num_blocks = -(-tokens // settings.page_size)
        return ContinuousBatchingConfig(
            page_size=settings.page_size,
            num_blocks=num_blocks,
            max_batch_tokens=settings.max_batch_tokens,
            per_request_processors=True,
            allow_block_sharing=True,
        )

    def _start(self) -> Any:
        with self._lock:
            if self._manager is not None and self._manager.is_running():
                return self._manager
            import torch

            with torch.inference_mode():
                manager = self._model.init_continuous_batching(
                    generation_config=self._generation_config(),
                    continuous_batching_config=self._batching_config(),
                )
                # Creates the batch processor now (CUDA graphs are captured here on GPUs), so
                # that its prefix cache can be observed before the loop starts.
                manager.warmup()
            self._watch_prefix_hits(manager)

            # The manager's loop thread inherits the daemon flag of the thread that starts it:
            # a daemon starter lets the process exit even if nobody closes the engine.
            # Inference mode is thread-local; the loop takes the one of the thread starting it.
            def start() -> None:
                with torch.inference_mode():
                    manager.start()

            starter = threading.Thread(target=start, daemon=True)
            starter.start()
            starter.join()
            self._manager = manager
            self._dispatcher = threading.Thread(
                target=self._dispatch, args=(manager,), name="steadychat-engine-out", daemon=True
            )
            self._dispatcher.start()
            log.info("continuous-batching engine started")
            return manager

    def _watch_prefix_hits(self, manager: Any) -> None:
        # The engine finds the longest cached prefix of each new request here; recording the
        # length it returns is how a reply reports its cached prompt tokens.
        cache = manager.batch_processor.cache
        search = cache.search_prefix_match
        hits = self._hits

        def search_and_record(request_id: str, prompt_ids: list[int]) -> int:
            matched = int(search(request_id, prompt_ids))
            if request_id in self._requests:
                hits[request_id] = hits.get(request_id, 0) + matched
            return matched

        cache.search_prefix_match = search_and_record

    def _dispatch(self, manager: Any) -> None:
        """Route the manager's outputs to their requests (one reader, no requeueing)."""
        while True:
            if not manager.is_running():
                if self._manager in (manager, None):  # not replaced by a restarted loop
                    error = RuntimeError("the generation engine stopped")
                    for waiting in list(self._requests.values()):
                        waiting._queue.put(error)
                return
            output = manager.get_result(timeout=0.1)
            if output is None:
                continue
            request = self._requests.get(output.request_id)
            if request is not None:
                request._queue.put(output)

    def close(self) -> None:
        """Stop the engine's loop; pending requests fail. A later request starts it again."""
        with self._lock:
            manager, self._manager = self._manager, None
        if manager is not None:
            try:
                manager.stop(block=True, timeout=30)
            except Exception:  # closing is best effort; the loop thread is a daemon
                log.warning("the generation engine did not stop cleanly", exc_info=True)
        if self._dispatcher is not None:
            self._dispatcher.join(timeout=5)

    # ------------------------------------------------------------------ requests
    def submit(
        self,
        prompt_ids: list[int],
        *,
        max_new_tokens: int,
        eos_token_id: int | list[int] | None,
        temperature: float,
        top_p: float,
        top_k: int,
    ) -> EngineRequest:
        """Queue one request; its outputs start coming at the next engine step.

        Args:
            prompt_ids: The templated prompt's token ids.
            max_new_tokens: The most tokens to generate.
            eos_token_id: Token id(s) that end the reply.
            temperature: Sampling temperature (1.0 with ``top_k=1`` is greedy decoding).
            top_p: Nucleus mass (1.0 keeps every token).
            top_k: Tokens kept by rank (1 is greedy; the vocabulary size keeps all).
        """
        manager = self._start()
        request_id = f"sc-{uuid.uuid4().hex}"
        request = EngineRequest(self, request_id)
        self._requests[request_id] = request  # before submitting: no output may be missed
        self.requests_started += 1
        self.peak_concurrency = max(self.peak_concurrency, len(self._requests))
        accepted = manager.add_request(
            input_ids=list(prompt_ids),
            request_id=request_id,
            max_new_tokens=max_new_tokens,
            streaming=True,
            eos_token_id=eos_token_id,
            temperature=float(temperature),
            top_p=float(top_p),
            top_k=int(top_k),
        )
        if accepted is None:
            self.forget(request_id)
            raise RuntimeError("the generation engine refused the request (it is stopping)")
        return request

    def cancel(self, request_id: str) -> None:
        """Cancel a request in the manager."""
        manager = self._manager
        if manager is not None:
            manager.cancel_request(request_id)

    def forget(self, request_id: str) -> None:
        """Drop a finished or cancelled request's routing entry."""
        self._requests.pop(request_id, None)
        self._hits.pop(request_id, None)

    def prefix_hit(self, request_id: str) -> int:
        """Prompt tokens of ``request_id`` served from the prefix cache so far."""
        return self._hits.get(request_id, 0)

    def pause(self) -> Any:
        """A context in which the engine's loop is paused (a running loop only)."""
        import contextlib

        manager = self._manager
        if manager is None or not manager.is_running():
            return contextlib.nullcontext()
        return manager.pause()
