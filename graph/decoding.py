"""Decoding beyond sampling for the local model: grammars (JSON, tool calls), penalties, logprobs.

A request that needs any of these builds a :class:`Decoding` from the model's
:class:`LocalDecoder`; its ``generation_kwargs()`` are passed to the chat model, which hands the
logits processors and stopping criteria to ``model.generate``. Grammars are compiled and
enforced with xgrammar (a JSON schema or the Hermes/Qwen ``<tool_call>`` format becomes a token
mask at every step); near the end of the token budget a second mask prefers tokens that close
what is open, so that even a random-weight model finishes its JSON within ``max_tokens``.
Logprobs are read from the distribution the token was chosen from: after the penalties, bias
and grammar, before temperature and top-k/top-p.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "Decoding",
    "DecodingError",
    "LocalDecoder",
    "LogprobEntry",
    "LogprobRecorder",
    "ToolSpec",
    "local_decoder",
    "supports_tools",
    "tool_call_schema",
]

# OpenAI's logprobs carry no -inf (JSON has none); vLLM writes this for a masked-out token.
_NO_CHANCE = -9999.0
_CLOSERS = (b"}", b"]")
_MARGIN = 16
"""Tokens of budget kept beyond the shortest valid completion before closing is preferred."""


class DecodingError(ValueError):
    """A request the decoder cannot serve (a schema xgrammar rejects, a budget too small)."""

    def __init__(self, message: str, *, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclasses.dataclass(frozen=True, kw_only=True)
class ToolSpec:
    """One function a tool call may name, with the JSON schema of its arguments."""

    name: str
    parameters: dict[str, Any]


@dataclasses.dataclass(frozen=True, kw_only=True)
class LogprobEntry:
    """One generated token with its log probability and the most likely alternatives."""

    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[tuple[str, float, list[int]]]


def supports_tools(chat_model: Any) -> bool:
    """Whether the chat model's own chat template renders ``tools`` (Qwen3's does).

    Args:
        chat_model: A chat model; only a local one with a tokenizer can say yes.

    Returns:
        True when the template reads the ``tools`` variable.
    """
    template = getattr(getattr(chat_model, "tokenizer", None), "chat_template", None)
    return isinstance(template, str) and "tools" in template


_DECODERS: weakref.WeakKeyDictionary[Any, LocalDecoder] = weakref.WeakKeyDictionary()
_DECODERS_LOCK = threading.Lock()


def local_decoder(chat_model: Any) -> LocalDecoder | None:
    """The decoder of a local transformers chat model, built once per model.

    Args:
        chat_model: A chat model.

    Returns:
        None for a model that does not run ``generate`` in process (a fake, a remote engine).
    """
    tokenizer = getattr(chat_model, "tokenizer", None)
    pipeline = getattr(getattr(chat_model, "llm", None), "pipeline", None)
    model = getattr(pipeline, "model", None)
    if tokenizer is None or model is None:
        return None
    with _DECODERS_LOCK:
        decoder = _DECODERS.get(model)
        if decoder is None:
            decoder = LocalDecoder(tokenizer, model)
            _DECODERS[model] = decoder
        return decoder


def tool_call_schema(tools: Sequence[ToolSpec]) -> dict[str, Any]:
    """The JSON schema of one call of any of ``tools``: ``{"name": ..., "arguments": {...}}``."""
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": tool.name}, "arguments": tool.parameters},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for tool in tools
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


class LocalDecoder:
    """Grammar compilation and per-request processors over one model's tokenizer.

    Args:
        tokenizer: The model's tokenizer.
        model: The transformers model (its vocabulary size and end-of-sequence ids).
    """

    def __init__(self, tokenizer: Any, model: Any) -> None:
        import xgrammar as xgr

        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tokenizer.eos_token_id
        self.stop_ids = [int(i) for i in (eos if isinstance(eos, list) else [eos])]
        self.vocab_size = int(model.config.get_text_config().vocab_size)
        self.tokenizer = tokenizer
        self.info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=self.vocab_size, stop_token_ids=self.stop_ids
        )
        self._compiler = xgr.GrammarCompiler(self.info, max_threads=1)
        self._lock = threading.Lock()
        vocab = self.info.decoded_vocab
        self.vocab = vocab
        import torch

        def having(parts: Sequence[bytes]) -> Any:
            mask = torch.zeros(self.vocab_size, dtype=torch.bool)
            ids = [i for i, raw in enumerate(vocab) if any(part in raw for part in parts)]
            mask[ids] = True
            return mask

        stops = torch.zeros(self.vocab_size, dtype=torch.bool)
        stops[[i for i in self.stop_ids if i < self.vocab_size]] = True
        # Closing preferences, best first: end the reply, then inside a string its closing
        # quote, outside one a closing bracket, then the end of a value.
        self.closing_masks = {
            True: [stops, having([b'"'])],
            False: [stops, having(_CLOSERS), having([b","])],
        }

    def json_grammar(self, schema: Mapping[str, Any] | None) -> Any:
        """A compiled grammar for one JSON value of ``schema`` (None: any JSON object).

        Raises:
            DecodingError: The schema cannot be compiled.
        """
        text = json.dumps({"type": "object"} if schema is None else dict(schema))
        try:
            with self._lock:
                return self._compiler.compile_json_schema(text, any_whitespace=False)
        except Exception as exc:  # xgrammar raises RuntimeError/ValueError on bad schemas
            raise DecodingError(
                f"The JSON schema cannot be enforced: {exc}", param="response_format"
            ) from exc

    def tool_call_grammar(self, tools: Sequence[ToolSpec]) -> Any:
        """A compiled grammar for one ``<tool_call>`` block calling one of ``tools``.

        Raises:
            DecodingError: A tool's parameters are not a schema xgrammar accepts.
        """
        import xgrammar as xgr

        try:
            body = xgr.Grammar.from_json_schema(
                json.dumps(tool_call_schema(tools)), any_whitespace=False
            )
            grammar = xgr.Grammar.concat(
                xgr.Grammar.from_ebnf('root ::= "<tool_call>\\n"'),
                body,
                xgr.Grammar.from_ebnf('root ::= "\\n</tool_call>"'),
            )
            with self._lock:
                return self._compiler.compile_grammar(grammar)
        except Exception as exc:
            raise DecodingError(
                f"The tools' parameters cannot be enforced: {exc}", param="tools"
            ) from exc

    def build(
        self,
        *,
        grammar: Any = None,
        minimal_tokens: int = 0,
        max_new_tokens: int,
        logit_bias: Mapping[int, float] | None = None,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        top_logprobs: int | None = None,
    ) -> Decoding:
        """Fresh processors for one generation (they keep per-generation state).

        Args:
            grammar: A compiled grammar the reply must follow, or None.
            minimal_tokens: Tokens the shortest valid reply of the grammar needs at most.
            max_new_tokens: The reply budget.
            logit_bias: Token id to bias added to its logit.
            frequency_penalty: Subtracted per earlier occurrence of a token in the reply.
            presence_penalty: Subtracted once from every token already in the reply.
            top_logprobs: Record logprobs with this many alternatives (None: no logprobs).

        Returns:
            The decoding.

        Raises:
            DecodingError: A budget too small for the grammar, a bias on an unknown token.
        """
        from transformers import SequenceBiasLogitsProcessor

        processors: list[Any] = []
        criteria: list[Any] = []
        if grammar is not None:
            if max_new_tokens < minimal_tokens:
                raise DecodingError(
                    f"max_tokens is {max_new_tokens}, but the shortest reply in the requested "
                    f"format takes up to {minimal_tokens} tokens.",
                    param="max_tokens",
                )
            processors.append(
                _GrammarProcessor(
                    grammar,
                    vocab_size=self.vocab_size,
                    closing=self.closing_masks,
                    vocab=self.vocab,
                    budget=max_new_tokens,
                    reserve=minimal_tokens + _MARGIN,
                )
            )
        if logit_bias:
            unknown = [tid for tid in logit_bias if not 0 <= tid < self.vocab_size]
            if unknown:
                raise DecodingError(
                    f"logit_bias names token id {unknown[0]}, outside this model's vocabulary "
                    f"(0 to {self.vocab_size - 1}).",
                    param="logit_bias",
                )
            processors.insert(
                0,
                SequenceBiasLogitsProcessor(
                    sequence_bias=[[[tid], float(bias)] for tid, bias in logit_bias.items()]
                ),
            )
        if frequency_penalty or presence_penalty:
            processors.insert(0, _PenaltyProcessor(frequency_penalty, presence_penalty))
        recorder = None
        if top_logprobs is not None:
            recorder = LogprobRecorder(self, top_logprobs)
            processors.append(recorder.processor)
            criteria.append(recorder.criterion)
        return Decoding(processors=processors, criteria=criteria, recorder=recorder)

    def minimal_tokens(self, schema: Mapping[str, Any] | None, *, wrapper: str = "") -> int:
        """An upper bound on the tokens of the shortest reply a schema accepts (chars >= tokens)."""
        shortest = _shortest_json(schema or {"type": "object"}, dict(schema or {}), depth=0)
        return len(shortest) + len(wrapper)

    def token_text(self, token_id: int) -> tuple[str, list[int]]:
        """A token's text and UTF-8 bytes."""
        raw = self.vocab[token_id] if 0 <= token_id < len(self.vocab) else b""
        return raw.decode("utf-8", errors="replace"), list(raw)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Decoding:
    """The processors and criteria of one generation, and its logprob recorder."""

    processors: list[Any]
    criteria: list[Any]
    recorder: LogprobRecorder | None

    def generation_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the chat model (handed on to ``model.generate``)."""
        kwargs: dict[str, Any] = {}
        if self.processors:
            kwargs["logits_processor"] = list(self.processors)
        if self.criteria:
            kwargs["stopping_criteria"] = list(self.criteria)
        return kwargs


class _GrammarProcessor:
    """Masks what the grammar forbids; near the budget's end, prefers what closes the value."""

    def __init__(
        self,
        grammar: Any,
        *,
        vocab_size: int,
        closing: dict[bool, list[Any]],
        vocab: list[bytes],
        budget: int,
        reserve: int,
    ) -> None:
        import xgrammar as xgr

        self._matcher = xgr.GrammarMatcher(grammar)
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        self._closing = closing
        self._vocab = vocab
        self._in_string = False
        self._escaped = False
        self._budget = budget
        self._reserve = reserve
        self._prompt_len: int | None = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import xgrammar as xgr

        if self._prompt_len is None:
            self._prompt_len = int(input_ids.shape[1])
        elif not self._matcher.is_terminated():
            token = int(input_ids[0, -1])
            self._matcher.accept_token(token)
            self._follow(self._vocab[token] if token < len(self._vocab) else b"")
        generated = int(input_ids.shape[1]) - self._prompt_len
        if self._matcher.is_terminated():
            return scores
        self._matcher.fill_next_token_bitmask(self._bitmask)
        device = scores.device
        scores = scores.to("cpu")
        xgr.apply_token_bitmask_inplace(scores, self._bitmask)
        if self._budget - generated <= self._reserve:
            allowed = scores[0] > float("-inf")
            for mask in self._closing[self._in_string]:
                preferred = allowed & mask
                if bool(preferred.any()):
                    scores[0, ~preferred] = float("-inf")
                    break
        return scores.to(device)

    def _follow(self, raw: bytes) -> None:
        # Whether the text so far ends inside a JSON string (the tags around a tool call hold
        # no quotes), which decides what closes the value.
        for byte in raw:
            if self._escaped:
                self._escaped = False
            elif self._in_string and byte == 0x5C:
                self._escaped = True
            elif byte == 0x22:
                self._in_string = not self._in_string


class _PenaltyProcessor:
    """OpenAI's frequency and presence penalties over the tokens generated so far."""

    def __init__(self, frequency: float, presence: float) -> None:
        self._frequency = frequency
        self._presence = presence
        self._prompt_len: int | None = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if self._prompt_len is None:
            self._prompt_len = int(input_ids.shape[1])
        generated = input_ids[0, self._prompt_len :]
        if generated.numel() == 0:
            return scores
        counts = torch.bincount(generated, minlength=scores.shape[-1])[: scores.shape[-1]]
        penalty = counts.to(scores.dtype) * self._frequency + (counts > 0).to(scores.dtype) * (
            self._presence
        )
        return scores - penalty.to(scores.device).unsqueeze(0)


class LogprobRecorder:
    """Records each generated token's logprob and top alternatives as generation runs.

    ``processor`` (last of the logits processors) keeps the step's distribution, ``criterion``
    (a stopping criterion, run once the token is chosen) turns it into an entry, so an entry
    exists as soon as its token's text is streamed. End-of-sequence tokens are not recorded.

    Args:
        decoder: The model's decoder (token texts).
        top: Alternatives per token (0 to 20).
    """

    def __init__(self, decoder: LocalDecoder, top: int) -> None:
        self._decoder = decoder
        self._top = top
        self._pending: Any = None
        self._entries: list[LogprobEntry] = []
        self._taken = 0
        self._lock = threading.Lock()
        self.processor = _RecordStep(self)
        self.criterion = _RecordToken(self)

    def keep(self, scores: Any) -> None:
        import torch

        self._pending = torch.log_softmax(scores[0].float(), dim=-1).cpu()

    def record(self, token_id: int) -> None:
        import torch

        pending, self._pending = self._pending, None
        if pending is None or token_id in self._decoder.stop_ids:
            return
        text, raw = self._decoder.token_text(token_id)
        top: list[tuple[str, float, list[int]]] = []
        if self._top:
            values, ids = torch.topk(pending, k=min(self._top, pending.shape[0]))
            for value, tid in zip(values.tolist(), ids.tolist(), strict=True):
                alt, alt_raw = self._decoder.token_text(int(tid))
                top.append((alt, _finite(value), alt_raw))
        entry = LogprobEntry(
            token=text, logprob=_finite(float(pending[token_id])), bytes=raw, top_logprobs=top
        )
        with self._lock:
            self._entries.append(entry)

    def take(self) -> list[LogprobEntry]:
        """The entries recorded since the last call."""
        with self._lock:
            new = self._entries[self._taken :]
            self._taken = len(self._entries)
        return new

    def all(self) -> list[LogprobEntry]:
        """Every entry recorded."""
        with self._lock:
            return list(self._entries)


class _RecordStep:
    def __init__(self, recorder: LogprobRecorder) -> None:
        self._recorder = recorder

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        self._recorder.keep(scores)
        return scores


class _RecordToken:
    def __init__(self, recorder: LogprobRecorder) -> None:
        self._recorder = recorder

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        self._recorder.record(int(input_ids[0, -1]))
        return torch.zeros((input_ids.shape[0],), dtype=torch.bool, device=input_ids.device)


def _finite(value: float) -> float:
    return value if value > _NO_CHANCE else _NO_CHANCE


def _shortest_json(schema: Any, root: dict[str, Any], *, depth: int) -> str:
    """The shortest JSON text of the longest alternative a schema accepts: the budget that
    closing a value needs, wherever the model went (an estimate: required members only)."""
    if not isinstance(schema, dict) or depth > 12:
        return "{}"
    if "$ref" in schema:
        target: Any = root
        for part in str(schema["$ref"]).lstrip("#/").split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return _shortest_json(target, root, depth=depth + 1)
    if "const" in schema:
        return json.dumps(schema["const"])
    if schema.get("enum"):
        return max((json.dumps(v) for v in schema["enum"]), key=len)
    # Of alternatives the longest: the model may take any of them.
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return max((_shortest_json(s, root, depth=depth + 1) for s in schema[key]), key=len)
    if schema.get("allOf"):
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            if isinstance(part, dict):
                merged.update(part)
        return _shortest_json(merged, root, depth=depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = kind[0] if kind else None
    if kind == "string":
        return json.dumps("a" * int(schema.get("minLength", 0)))
    if kind in ("integer", "number"):
        return "0" if "minimum" not in schema else json.dumps(schema["minimum"])
    if kind == "boolean":
        return "false"
    if kind == "null":
        return "null"
    if kind == "array":
        item = _shortest_json(schema.get("items", {}), root, depth=depth + 1)
        return "[" + ", ".join([item] * int(schema.get("minItems", 0))) + "]"
    properties = schema.get("properties") or {}
    if kind == "object" or properties:
        parts = [
            f"{json.dumps(name)}: {_shortest_json(properties.get(name, {}), root, depth=depth + 1)}"
            for name in schema.get("required", [])
        ]
        return "{" + ", ".join(parts) + "}"
    return "{}"
