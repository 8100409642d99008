"""QwenChatModel: a LangChain chat model over a local transformers text-generation pipeline."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import queue
import re
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LangSmithParams, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_huggingface import ChatHuggingFace, HuggingFacePipeline
from pydantic import ConfigDict, PrivateAttr, model_validator

from graph.engine import BatchedEngine, EngineSettings, engine_supports
from graph.token_memo import TokenMemo
from nodes.profiles import get_profile, resolve_generation
from nodes.text import THINK_CLOSE, THINK_OPEN, ThinkStripper, held_prefix, message_text

__all__ = ["QwenChatModel", "StopSequenceFilter"]

log = logging.getLogger(__name__)

# Lone UTF-16 surrogates (JSON "\ud800") are valid in a Python str but not in UTF-8: the
# tokenizer rejects them with a TypeError. They become U+FFFD, as a UTF-8 decoder would do.
_SURROGATES = re.compile("[\ud800-\udfff]")

_SEED_RANGE = 2**32

# Per-call keyword arguments that generation understands (besides ``stop``).
_CALL_KWARGS = frozenset(
    {
        "profile",
        "temperature",
        "top_p",
        "top_k",
        "repetition_penalty",
        "max_new_tokens",
        "max_tokens",
        "seed",
        "enable_thinking",
        "cancel_event",
        "model",
        "stream_usage",
        # Rendered by the chat template, and generate()'s own (graph/decoding.py builds them).
        "tools",
        "logits_processor",
        "stopping_criteria",
    }
)
_ROLES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "ai": "assistant",
}


class StopSequenceFilter:
    """Cuts streamed text at the first stop sequence, never emitting the stop text or beyond.

    A tail that could be the start of a stop sequence is held back, so a stop sequence spread
    over several pieces is still caught before any of it is shown.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [stop for stop in stops if stop]
        self._buffer = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Add a piece; return the text that is certainly before any stop sequence."""
        if self.stopped:
            return ""
        if not self._stops:
            return text
        self._buffer += text
        hits = [idx for idx in (self._buffer.find(stop) for stop in self._stops) if idx >= 0]
        if hits:
            self.stopped = True
            out = self._buffer[: min(hits)]
            self._buffer = ""
            return out
        keep = max(held_prefix(self._buffer, stop) for stop in self._stops)
        out = self._buffer[: len(self._buffer) - keep]
        self._buffer = self._buffer[len(self._buffer) - keep :]
        return out

    def finish(self) -> str:
        """Flush held-back text (nothing once a stop sequence was found)."""
        rest = "" if self.stopped else self._buffer
        self._buffer = ""
        return rest


@dataclass(kw_only=True)
class _CallParams:
    generate_kwargs: dict[str, Any]
    max_new_tokens: int
    stop: list[str]
    seed: int | None
    enable_thinking: bool | None
    cancel_event: threading.Event | None
    profile: str
    serial_reason: str | None = None
    """Why this call must take the serialised ``generate`` path (None: the engine may run it)."""
    tools: list[dict[str, Any]] | None = None
    decoding: dict[str, list[Any]] | None = None
    """A request's logits processors and stopping criteria (graph/decoding.py)."""


@dataclass(kw_only=True)
class _Outcome:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    cancelled: bool
    cached_tokens: int = 0


class _ReplyTracker:
    """Decodes each new token as generate() produces it, filters it and decides when to stop.

    It is a transformers ``StoppingCriteria`` so that it sees every token synchronously, before
    the next forward pass: a stop sequence or a cancel ends generation at exactly that token.
    """

    def __init__(
        self,
        *,
        decode: Callable[[list[int]], str],
        prompt_len: int,
        stops: Sequence[str],
        in_think: bool,
        strip_thinking: bool,
        emit: Callable[[str], None],
        events: Sequence[threading.Event],
    ) -> None:
        self._decode = decode
        self._prompt_len = prompt_len
        self._ids: list[int] = []
        self._window = 0
        self._shown = 0
        self._think: ThinkStripper | _PassThrough = (
            ThinkStripper(in_think=in_think) if strip_thinking else _PassThrough()
        )
        self._stop = StopSequenceFilter(stops)
        self._emit = emit
        self._events = events
        self.parts: list[str] = []
        self.cancelled = False

    @property
    def stopped_by_sequence(self) -> bool:
        return self._stop.stopped

    def _push(self, raw: str) -> None:
        visible = self._stop.feed(self._think.feed(raw))
        if visible:
            self.parts.append(visible)
            self._emit(visible)

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        done = self.feed(input_ids[0, self._prompt_len + len(self._ids) :].tolist())
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

    def feed(self, new: list[int]) -> bool:
        """Take the next generated token ids; True when generation must stop here."""
        self._ids.extend(new)
        # Decode from the last line start only, so each step costs O(line), not O(reply).
        text = self._decode(self._ids[self._window :])
        if not text.endswith("\ufffd"):  # else: a multi-byte character is still incomplete
            self._push(text[self._shown :])
            if text.endswith("\n"):
                self._window, self._shown = len(self._ids), 0
            else:
                self._shown = len(text)
        if any(event.is_set() for event in self._events):
            self.cancelled = True
        return self._stop.stopped or self.cancelled

    @property
    def generated(self) -> int:
        """Tokens taken so far."""
        return len(self._ids)

    def finish(self) -> None:
        text = self._decode(self._ids[self._window :])
        if len(text) > self._shown:
            self._push(text[self._shown :])
        tail = self._stop.feed(self._think.finish())
        tail += self._stop.finish()
        if tail:
            self.parts.append(tail)
            self._emit(tail)


@dataclass
class CallOptions:
    """What a chat model's call asks for, checked: the part every backend reads the same way."""

    profile: str
    generation: dict[str, Any]
    stop: list[str]
    seed: int | None
    cancel_event: threading.Event | None


def call_options(
    model: Any, stop: list[str] | str | None, kwargs: dict[str, Any], accepted: frozenset[str]
) -> CallOptions:
    """Check a call's arguments against ``accepted`` and resolve them with the model's own.

    Args:
        model: The chat model (its ``model_id``, ``model_name``, ``default_profile`` and
            sampling fields are the defaults).
        stop: The call's stop sequences (the model's own when None).
        kwargs: The call's other arguments.
        accepted: The argument names the model takes.

    Raises:
        ValueError: An unknown argument, another model's name, or a malformed stop, seed or
            cancel event.
    """
    name = type(model).__name__
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(
            f"{name} got unsupported argument(s) {', '.join(unknown)}; accepted: "
            f"{', '.join(sorted(accepted - {'stream_usage'}))}, stop"
        )
    requested = kwargs.get("model")
    if requested is not None and requested not in {model.model_id, model.model_name}:
        raise ValueError(
            f"this {name} serves {model.model_name!r}; it cannot switch to {requested!r}"
        )
    profile = kwargs.get("profile") or model.default_profile
    max_new = kwargs.get("max_new_tokens")
    if max_new is None:
        max_new = kwargs.get("max_tokens")
    if max_new is None:
        max_new = model.max_tokens

    def pick(field_name: str) -> Any:
        value = kwargs.get(field_name)
        return getattr(model, field_name) if value is None else value

    generation = resolve_generation(
        profile,
        temperature=pick("temperature"),
        top_p=pick("top_p"),
        top_k=pick("top_k"),
        repetition_penalty=pick("repetition_penalty"),
        max_new_tokens=max_new,
    )
    stops = stop if stop is not None else model.stop
    if isinstance(stops, str):
        stops = [stops]
    if stops is not None and not all(isinstance(s, str) for s in stops):
        raise ValueError("stop must be a string or a list of strings")
    seed = pick("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    cancel_event = kwargs.get("cancel_event")
    if cancel_event is not None and not isinstance(cancel_event, threading.Event):
        raise ValueError("cancel_event must be a threading.Event")
    return CallOptions(
        profile=profile,
        generation=generation,
        stop=[s for s in (stops or []) if s],
        seed=seed,
        cancel_event=cancel_event,
    )


def render_chat_prompt(
    model: Any,
    dicts: list[dict[str, Any]],
    enable_thinking: bool | None = None,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    """Messages (as chat-template dicts) rendered by the model's own template, for generation.

    ``model`` is a chat model holding ``tokenizer``, ``_tokenizer_lock``, ``enable_thinking``
    and ``_template_takes_thinking`` (the local and the remote model alike).
    """
    extra: dict[str, Any] = {}
    thinking = model.enable_thinking if enable_thinking is None else enable_thinking
    if thinking is not None and model._template_takes_thinking:
        extra["enable_thinking"] = thinking
    if tools:
        extra["tools"] = tools
    from jinja2 import TemplateError

    try:
        with model._tokenizer_lock:
            return str(
                model.tokenizer.apply_chat_template(
                    dicts, tokenize=False, add_generation_prompt=True, **extra
                )
            )
    except TemplateError as exc:
        raise ValueError(f"the model's chat template rejected these messages: {exc}") from exc


def memo_token_ids(model: Any, text: str) -> list[int]:
    """Token ids of ``text`` under the model's tokenizer, through its (lazily made) token memo."""
    text = _SURROGATES.sub("\ufffd", text)
    with model._tokenizer_lock:
        memo = model._token_memo
        if memo is None:
            memo = model._token_memo = TokenMemo(model.tokenizer, model._tokenizer_lock)
    return list(memo.token_ids(text))


class QwenChatModel(ChatHuggingFace):
    """Chat model over a local transformers text-generation pipeline (Qwen3 by default).

    Built on langchain-huggingface's ``ChatHuggingFace``/``HuggingFacePipeline``, it adds what
    they lack for a local model: async without blocking the event loop, token streaming,
    usage metadata, stop sequences streaming or not, generation profiles, seeds, cancellation,
    ``<think>`` stripping and one lock so that one model instance serves every caller.

    Per-call kwargs (``invoke``/``stream``/``ainvoke``/``astream``/``bind``): ``profile``,
    ``temperature``, ``top_p``, ``top_k``, ``repetition_penalty``, ``max_new_tokens`` (or
    ``max_tokens``), ``seed``, ``stop``, ``enable_thinking`` and ``cancel_event``.
    Precedence: per-call kwargs, then the instance's fields, then the profile.
    """

    model_config = ConfigDict(populate_by_name=True)

    default_profile: str = "general"
    """Profile used when a call names none."""
    top_k: int | None = None
    """Instance default for top-k sampling (None: the profile's)."""
    repetition_penalty: float | None = None
    """Instance default repetition penalty (None: the profile's)."""
    enable_thinking: bool | None = None
    """Passed to chat templates that take it; None keeps the template's default."""
    strip_thinking: bool = True
    """Remove ``<think>...</think>`` blocks from replies."""
    context_window: int | None = None
    """Tokens per call (prompt + reply); capped by the model's ``max_position_embeddings``."""
    engine: Literal["batched", "serial"] = "batched"
    """``batched``: every call goes through one continuous-batching engine (transformers'
    ``ContinuousBatchingManager``), so concurrent calls decode together and a prompt that
    extends an earlier one reuses its KV; calls the engine cannot run take the serialised
    path. ``serial``: one ``generate`` at a time, always."""
    engine_settings: EngineSettings = EngineSettings()
    """KV cache and batch sizes of the engine."""

    _generate_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _tokenizer_lock: threading.RLock = PrivateAttr(default_factory=threading.RLock)
    _token_memo: TokenMemo | None = PrivateAttr(default=None)
    _template_takes_thinking: bool = PrivateAttr(default=False)
    _engine: BatchedEngine | None = PrivateAttr(default=None)
    _engine_unavailable: str | None = PrivateAttr(default=None)
    _engine_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @model_validator(mode="before")
    @classmethod
    def _fill_from_pipeline(cls, values: Any) -> Any:
        if isinstance(values, dict):
            llm = values.get("llm")
            if llm is None and values.get("pipeline") is not None:
                values = dict(values)
                llm = HuggingFacePipeline(pipeline=values.pop("pipeline"))
                values["llm"] = llm
            pipe = getattr(llm, "pipeline", None)
            if pipe is not None:
                values.setdefault("tokenizer", pipe.tokenizer)
                values.setdefault("model_id", getattr(llm, "model_id", None))
        return values

    @model_validator(mode="after")
    def _check_local(self) -> QwenChatModel:
        pipe = getattr(self.llm, "pipeline", None)
        if pipe is None or getattr(pipe, "model", None) is None:
            raise ValueError(
                "QwenChatModel needs llm=HuggingFacePipeline(pipeline=...) or pipeline="
            )
        if self.tokenizer is None or not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(
                "the tokenizer has no chat template; QwenChatModel builds prompts only with "
                "the tokenizer's own template"
            )
        get_profile(self.default_profile)
        limit = getattr(pipe.model.config, "max_position_embeddings", None)
        if limit:
            self.context_window = min(self.context_window or limit, limit)
        elif self.context_window is None:
            self.context_window = 8192
        template = self.tokenizer.chat_template
        self._template_takes_thinking = isinstance(template, str) and "enable_thinking" in template
        return self

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, **kwargs: Any) -> QwenChatModel:
        """Wrap an already loaded transformers model and tokenizer.

        Args:
            model: A causal LM (e.g. ``AutoModelForCausalLM.from_pretrained(...)``).
            tokenizer: Its tokenizer, with a chat template.
            **kwargs: Fields of this class (``model_id``, ``context_window``, ``temperature``...).

        Returns:
            The chat model.
        """
        from transformers import pipeline

        pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)
        model_id = kwargs.pop("model_id", None) or getattr(model, "name_or_path", None)
        llm = HuggingFacePipeline(pipeline=pipe, model_id=model_id)
        return cls(llm=llm, tokenizer=tokenizer, model_id=model_id, **kwargs)

    @property
    def _llm_type(self) -> str:
        return "qwen-local-pipeline"

    @property
    def model_name(self) -> str:
        """The name clients see (``/v1/models``): the model id or path it was loaded from."""
        return self.model_id or "local"

    @property
    def _pipeline(self) -> Any:
        return self.llm.pipeline

    # ----------------------------------------------------------------- prompts and tokens
    def _to_chatml_format(self, message: BaseMessage) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if isinstance(message, SystemMessage):
            role = "system"
        elif isinstance(message, HumanMessage):
            role = "user"
        elif isinstance(message, AIMessage):
            if message.invalid_tool_calls:
                raise ValueError("QwenChatModel cannot render invalid tool calls")
            role = "assistant"
            if message.tool_calls:  # as transformers' chat templates take them
                extra["tool_calls"] = [
                    {
                        "id": c["id"],
                        "type": "function",
                        "function": {"name": c["name"], "arguments": c["args"]},
                    }
                    for c in message.tool_calls
                ]
        elif isinstance(message, ToolMessage):
            role, extra = "tool", {"tool_call_id": message.tool_call_id}
        elif isinstance(message, ChatMessage) and message.role in _ROLES:
            role = _ROLES[message.role]
        else:
            raise ValueError(
                f"QwenChatModel accepts system, human, ai and tool messages, not {message.type!r}"
            )
        return {
            "role": role,
            "content": _SURROGATES.sub("\ufffd", message_text(message, strict=True)),
            **extra,
        }

    def _to_chat_prompt(
        self,
        messages: list[BaseMessage],
        enable_thinking: bool | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        """Render messages with the tokenizer's own chat template plus the generation prompt."""
        if not messages:
            raise ValueError("at least one message is required")
        dicts = [self._to_chatml_format(message) for message in messages]
        return render_chat_prompt(self, dicts, enable_thinking, tools)

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` under the model's own tokenizer (no special tokens added)."""
        return memo_token_ids(self, text)

    def get_num_tokens(self, text: str) -> int:
        """Number of tokens in ``text`` under the model's own tokenizer."""
        return len(self.get_token_ids(text))

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None
    ) -> int:
        """Length of the templated prompt for ``messages``, generation prompt included.

        Args:
            messages: The conversation as it would be sent.
            tools: Tools rendered into the prompt (OpenAI's function tool dicts).

        Returns:
            Exactly the number of prompt tokens a call with these messages uses.
        """
        return self.get_num_tokens(self._to_chat_prompt(messages, tools=list(tools or []) or None))

    def _decode(self, ids: list[int]) -> str:
        with self._tokenizer_lock:
            return str(
                self.tokenizer.decode(
                    ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
                )
            )

    # ----------------------------------------------------------------- parameters
    def _call_params(self, stop: list[str] | None, kwargs: dict[str, Any]) -> _CallParams:
        common = call_options(self, stop, kwargs, _CALL_KWARGS)
        generate_kwargs, stops, seed = common.generation, common.stop, common.seed
        cancel_event, profile = common.cancel_event, common.profile

        def pick(name: str, instance_value: Any) -> Any:
            value = kwargs.get(name)
            return instance_value if value is None else value

        decoding = {k: list(kwargs.get(k) or []) for k in ("logits_processor", "stopping_criteria")}
        # Grammars, penalties and logprobs run as generate()'s processors: the serialised path.
        decoding_reason = "logits processors" if any(decoding.values()) else None
        serial_reason = None
        if seed is not None:
            # The engine samples every request from one generator: a seed of its own needs
            # the model to itself.
            serial_reason = "a seed"
        elif pick("repetition_penalty", self.repetition_penalty) not in (None, 1, 1.0):
            # The engine has no repetition penalty (transformers marks it unsupported there);
            # one asked for explicitly is honoured on the serialised path. A profile's
            # default penalty is not applied by the engine.
            serial_reason = "a repetition penalty"
        return _CallParams(
            generate_kwargs=generate_kwargs,
            max_new_tokens=generate_kwargs["max_new_tokens"],
            stop=stops,
            # Any integer is a seed (OpenAI's is unbounded, negative included) while
            # transformers' set_seed takes 0 to 2**32 - 1: folding keeps every seed
            # deterministic instead of failing the call.
            seed=None if seed is None else seed % _SEED_RANGE,
            enable_thinking=kwargs.get("enable_thinking"),
            cancel_event=cancel_event,
            profile=profile,
            serial_reason=serial_reason or decoding_reason,
            tools=kwargs.get("tools"),
            decoding=decoding,
        )

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="huggingface",
            ls_model_name=kwargs.get("model") or self.model_name,
            ls_model_type="chat",
        )
        temperature = kwargs.get("temperature", self.temperature)
        if temperature is None:
            temperature = get_profile(kwargs.get("profile") or self.default_profile).temperature
        params["ls_temperature"] = float(temperature)
        max_tokens = kwargs.get("max_new_tokens") or kwargs.get("max_tokens") or self.max_tokens
        if max_tokens is not None:
            params["ls_max_tokens"] = int(max_tokens)
        stops = stop if stop is not None else self.stop
        if stops:
            params["ls_stop"] = [stops] if isinstance(stops, str) else list(stops)
        return params

    # ----------------------------------------------------------------- generation
    def _run_generation(
        self,
        prompt: str,
        params: _CallParams,
        *,
        emit: Callable[[str], None] | None = None,
        abort: threading.Event | None = None,
    ) -> _Outcome:
        """The one place a reply is generated: through the engine, or serialised.

        Args:
            prompt: The templated prompt.
            params: Resolved call parameters.
            emit: Called with each piece of visible text as soon as it is certain.
            abort: Set by the caller (a closed stream) to stop at the next token.

        Returns:
            The visible text, token counts and finish reason.
        """
        prompt_ids = self.get_token_ids(prompt)
        prompt_len = len(prompt_ids)
        room = (self.context_window or 0) - prompt_len
        if room < 1:
            raise ValueError(
                f"the prompt has {prompt_len} tokens and the context window is "
                f"{self.context_window}: shorten the conversation"
            )
        max_new = min(params.max_new_tokens, room)
        events = [e for e in (params.cancel_event, abort) if e is not None]
        if any(event.is_set() for event in events):
            return _Outcome(
                text="",
                prompt_tokens=prompt_len,
                completion_tokens=0,
                finish_reason="stop",
                cancelled=True,
            )
        tracker = _ReplyTracker(
            decode=self._decode,
            prompt_len=prompt_len,
            stops=params.stop,
            in_think=_opens_think(prompt),
            strip_thinking=self.strip_thinking,
            emit=emit or (lambda _text: None),
            events=events,
        )
        engine = self.batched_engine() if params.serial_reason is None else None
        if engine is not None:
            return self._run_batched(engine, prompt_ids, max_new, params, tracker, events)
        return self._run_serial(prompt_ids, max_new, params, tracker, events)

    def batched_engine(self) -> BatchedEngine | None:
        """The model's continuous-batching engine (created on first use), or None where it
        cannot run: ``engine="serial"``, or a model the engine does not support."""
        if self.engine != "batched" or self._engine_unavailable is not None:
            return None
        with self._engine_lock:
            if self._engine is None:
                model = self._pipeline.model
                reason = engine_supports(model)
                if reason is not None:
                    log.warning("generation is serialised: %s", reason)
                    self._engine_unavailable = reason
                    return None
                self._engine = BatchedEngine.for_model(
                    model,
                    context_window=self.context_window or 8192,
                    settings=self.engine_settings,
                )
            return self._engine

    def close(self) -> None:
        """Stop the engine's loop (a later call starts it again)."""
        with self._engine_lock:
            engine = self._engine
        if engine is not None:
            engine.close()

    def _generation_config(self, params: _CallParams, max_new: int) -> Any:
        model = self._pipeline.model
        config = copy.deepcopy(model.generation_config)
        config.update(**{**params.generate_kwargs, "max_new_tokens": max_new})
        if not config.do_sample:
            # Sampling knobs of the checkpoint's defaults would only draw warnings.
            config.temperature = config.top_p = config.top_k = None
        if config.pad_token_id is None:
            config.pad_token_id = self.tokenizer.pad_token_id or self.tokenizer.eos_token_id
        return config

    def _finish(
        self,
        tracker: _ReplyTracker,
        *,
        prompt_len: int,
        last_token: int | None,
        eos: Any,
        max_new: int,
        cached: int = 0,
    ) -> _Outcome:
        completion = tracker.generated
        eos_ids = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
        ended_by_eos = completion > 0 and last_token in eos_ids
        if tracker.stopped_by_sequence or tracker.cancelled or ended_by_eos:
            finish = "stop"
        else:
            finish = "length" if completion >= max_new else "stop"
        return _Outcome(
            text="".join(tracker.parts),
            prompt_tokens=prompt_len,
            completion_tokens=completion,
            finish_reason=finish,
            cancelled=tracker.cancelled,
            cached_tokens=cached,
        )

    def _run_batched(
        self,
        engine: BatchedEngine,
        prompt_ids: list[int],
        max_new: int,
        params: _CallParams,
        tracker: _ReplyTracker,
        events: list[threading.Event],
    ) -> _Outcome:
        """Generate through the shared engine: this request decodes alongside the others."""
        gen = params.generate_kwargs
        eos = self._pipeline.model.generation_config.eos_token_id
        if gen.get("do_sample"):
            vocab = int(self._pipeline.model.config.get_text_config().vocab_size)
            temperature = float(gen["temperature"])
            top_p = float(gen.get("top_p") or 1.0)
            top_k = int(gen.get("top_k") or vocab)
        else:
            # Greedy: only the most likely token survives top-k 1, so sampling picks it.
            temperature, top_p, top_k = 1.0, 1.0, 1
        request = engine.submit(
            prompt_ids,
            max_new_tokens=max_new,
            eos_token_id=eos,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
        )
        last: int | None = None
        try:
            done = False
            for new in request.tokens(events):
                for token in new:
                    last = token
                    # One token at a time: a stop sequence or a cancel ends the reply exactly
                    # at the token that completed it, as on the serialised path.
                    if tracker.feed([token]):
                        done = True
                        break
                if done:
                    break
            if any(event.is_set() for event in events):
                tracker.cancelled = True
            tracker.finish()
            cached = request.cached_tokens
        finally:
            request.cancel()
        return self._finish(
            tracker,
            prompt_len=len(prompt_ids),
            last_token=last,
            eos=eos,
            max_new=max_new,
            cached=cached,
        )

    def _run_serial(
        self,
        prompt_ids: list[int],
        max_new: int,
        params: _CallParams,
        tracker: _ReplyTracker,
        events: list[threading.Event],
    ) -> _Outcome:
        """One ``generate`` at a time on the shared model."""
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList, set_seed

        with self._generate_lock:
            if any(event.is_set() for event in events):
                tracker.cancelled = True
                return self._finish(
                    tracker, prompt_len=len(prompt_ids), last_token=None, eos=None, max_new=max_new
                )
            model = self._pipeline.model
            config = self._generation_config(params, max_new)
            engine = self._engine
            # A seeded call draws from the global generator, which the engine's loop draws from
            # too: the loop pauses while it runs, so the same seed gives the same reply.
            pause = (
                engine.pause()
                if engine is not None and params.seed is not None
                else contextlib.nullcontext()
            )
            with pause:
                if params.seed is not None:
                    set_seed(params.seed)
                input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=model.device)
                extra = params.decoding or {}
                with torch.inference_mode():
                    output = model.generate(
                        input_ids=input_ids,
                        attention_mask=torch.ones_like(input_ids),
                        generation_config=config,
                        # A request's own processors and criteria (graph/decoding.py) first.
                        logits_processor=LogitsProcessorList(extra.get("logits_processor", [])),
                        stopping_criteria=StoppingCriteriaList(
                            [*extra.get("stopping_criteria", []), tracker]
                        ),
                    )
            tracker.finish()
        return self._finish(
            tracker,
            prompt_len=len(prompt_ids),
            last_token=int(output[0, -1]) if output.shape[-1] > len(prompt_ids) else None,
            eos=config.eos_token_id,
            max_new=max_new,
        )

    def _metadata(self, outcome: _Outcome) -> tuple[dict[str, Any], dict[str, Any]]:
        usage: dict[str, Any] = {
            "input_tokens": outcome.prompt_tokens,
            "output_tokens": outcome.completion_tokens,
            "total_tokens": outcome.prompt_tokens + outcome.completion_tokens,
            "input_token_details": {"cache_read": outcome.cached_tokens},
        }
        meta: dict[str, Any] = {
            "finish_reason": outcome.finish_reason,
            "model_name": self.model_name,
            "model_provider": "huggingface",
        }
        if outcome.cancelled:
            meta["cancelled"] = True
        return usage, meta

    def _prepare(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> tuple[str, _CallParams]:
        params = self._call_params(stop, kwargs)
        return self._to_chat_prompt(messages, params.enable_thinking, params.tools), params

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        stream: bool | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        prompt, params = self._prepare(messages, stop, kwargs)
        outcome = self._run_generation(prompt, params)
        usage, meta = self._metadata(outcome)
        message = AIMessage(
            content=outcome.text,
            usage_metadata=usage,
            response_metadata=meta,
        )
        return ChatResult(
            generations=[ChatGeneration(message=message, generation_info=dict(meta))],
            llm_output={"token_usage": usage, "model_name": self.model_name},
        )

    def _final_chunk(self, outcome: _Outcome) -> ChatGenerationChunk:
        usage, meta = self._metadata(outcome)
        return ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                usage_metadata=usage,  # type: ignore[arg-type]
                response_metadata=meta,
                chunk_position="last",
            ),
            generation_info=dict(meta),
        )

    def _worker(
        self,
        prompt: str,
        params: _CallParams,
        push: Callable[[tuple[str, Any]], None],
        abort: threading.Event,
    ) -> threading.Thread:
        def run() -> None:
            try:
                outcome = self._run_generation(
                    prompt, params, emit=lambda text: push(("text", text)), abort=abort
                )
            except BaseException as exc:  # handed to the consumer, which re-raises it
                push(("error", exc))
            else:
                push(("done", outcome))

        thread = threading.Thread(target=run, name="steadychat-generate", daemon=True)
        thread.start()
        return thread

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        *,
        stream_usage: bool | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        prompt, params = self._prepare(messages, stop, kwargs)
        items: queue.Queue[tuple[str, Any]] = queue.Queue()
        abort = threading.Event()
        self._worker(prompt, params, items.put, abort)
        try:
            while True:
                kind, value = items.get()
                if kind == "text":
                    chunk = ChatGenerationChunk(message=AIMessageChunk(content=value))
                    if run_manager:
                        run_manager.on_llm_new_token(value, chunk=chunk)
                    yield chunk
                elif kind == "error":
                    raise value
                else:
                    yield self._final_chunk(value)
                    return
        finally:
            # A consumer that stops early (break, close, exception) stops generation too.
            abort.set()

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        *,
        stream_usage: bool | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        prompt, params = self._prepare(messages, stop, kwargs)
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        abort = threading.Event()

        def push(item: tuple[str, Any]) -> None:
            try:
                loop.call_soon_threadsafe(items.put_nowait, item)
            except RuntimeError:  # the loop is gone: nobody is listening any more
                abort.set()

        self._worker(prompt, params, push, abort)
        try:
            while True:
                kind, value = await items.get()
                if kind == "text":
                    chunk = ChatGenerationChunk(message=AIMessageChunk(content=value))
                    if run_manager:
                        await run_manager.on_llm_new_token(value, chunk=chunk)
                    yield chunk
                elif kind == "error":
                    raise value
                else:
                    yield self._final_chunk(value)
                    return
        finally:
            abort.set()

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        stream: bool | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        prompt, params = self._prepare(messages, stop, kwargs)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[_Outcome] = loop.create_future()
        abort = threading.Event()

        def settle(item: tuple[str, Any]) -> None:
            kind, value = item
            if kind == "text" or done.done():
                return
            if kind == "error":
                done.set_exception(value)
            else:
                done.set_result(value)

        def push(item: tuple[str, Any]) -> None:
            if item[0] == "text":
                return
            try:
                loop.call_soon_threadsafe(settle, item)
            except RuntimeError:
                abort.set()

        self._worker(prompt, params, push, abort)
        try:
            outcome = await done
        finally:
            abort.set()
        usage, meta = self._metadata(outcome)
        message = AIMessage(
            content=outcome.text,
            usage_metadata=usage,
            response_metadata=meta,
        )
        return ChatResult(
            generations=[ChatGeneration(message=message, generation_info=dict(meta))],
            llm_output={"token_usage": usage, "model_name": self.model_name},
        )

    # ----------------------------------------------------------------- unsupported
    def bind_tools(
        self, tools: Sequence[Any], **kwargs: Any
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Not supported: the local pipeline has no tool-calling parser.

        Raises:
            NotImplementedError: Always.
        """
        raise NotImplementedError(
            "QwenChatModel does not support tool calling over a local transformers pipeline"
        )

    def with_structured_output(self, schema: Any = None, **kwargs: Any) -> Any:
        """Not supported: neither tool calling nor constrained JSON decoding is available.

        Raises:
            NotImplementedError: Always.
        """
        raise NotImplementedError(
            "QwenChatModel does not support structured output (no tool calling or constrained "
            "decoding over a local transformers pipeline); ask for JSON in the prompt instead"
        )


class _PassThrough:
    """Stand-in for ThinkStripper when thinking text is to be kept."""

    def feed(self, text: str) -> str:
        return text

    def finish(self) -> str:
        return ""


def _opens_think(prompt: str) -> bool:
    # Templates of thinking checkpoints may open the think block in the generation prompt
    # itself; the reply then starts inside it and only the closing tag appears.
    tail = prompt[prompt.rfind("<|im_start|>") :] if "<|im_start|>" in prompt else prompt
    return tail.rfind(THINK_OPEN) > tail.rfind(THINK_CLOSE)
