"""Request and response bodies of the REST API (layered: Create, Patch, Public, Detail)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, field_validator

from graph.views import CheckpointView, ThreadRecord, ThreadView, TurnResult
from nodes.profiles import PROFILES
from nodes.slots import slot_label

# The names come from nodes.profiles: a Literal built from them validates, documents (an enum
# in the OpenAPI document) and words its errors as a written-out one would. mypy cannot read a
# Literal built at run time, so it checks the names as plain strings.
if TYPE_CHECKING:
    ProfileName = str
else:
    ProfileName = Literal[tuple(PROFILES)]

MAX_TITLE_CHARS = 200
MAX_STOP_SEQUENCES = 4
MAX_SLOT_NAME_CHARS = 64
MAX_SLOT_VALUE_CHARS = 2000


class _Request(BaseModel):
    # Unknown fields are refused so that a typo ("temprature") is an error, not a silent no-op.
    model_config = ConfigDict(extra="forbid")


class ThreadCreate(_Request):
    """Body of POST /threads."""

    title: StrictStr | None = Field(default=None, max_length=MAX_TITLE_CHARS)
    metadata: dict[str, Any] | None = None


class ThreadPublic(BaseModel):
    """A thread as clients see it."""

    thread_id: str
    title: str | None
    created_at: datetime
    updated_at: datetime
    turns: int
    metadata: dict[str, Any]

    @classmethod
    def of(cls, info: ThreadRecord) -> ThreadPublic:
        """Build from a thread record."""
        return cls.model_validate(info, from_attributes=True)


class ThreadList(BaseModel):
    """A page of threads, newest-updated first."""

    data: list[ThreadPublic]
    total: int
    limit: int
    offset: int


class SlotChangePublic(BaseModel):
    """An earlier value of a slot."""

    value: str | None
    turn: int
    source: str
    replaced_at: int


class SlotPublic(BaseModel):
    """A remembered fact with its provenance and history."""

    value: str | None
    turn: int
    source: str
    evidence: str
    history: list[SlotChangePublic]
    label: str = ""
    """How the slot reads to a person ("Order number", "Remember" for a memo)."""

    @classmethod
    def of(cls, name: str, slot: Mapping[str, Any]) -> SlotPublic:
        """Build from a state slot and its name."""
        return cls.model_validate({**slot, "label": slot_label(name)})


class WindowMessagePublic(BaseModel):
    """A message still in the verbatim window."""

    role: Literal["user", "assistant"]
    content: str
    turn: int
    timestamp: str | None


class ThreadDetail(BaseModel):
    """A thread and what the service remembers of it."""

    thread: ThreadPublic
    slots: dict[str, SlotPublic]
    summary_l1: list[dict[str, Any]]
    summary_l2: dict[str, Any] | None
    topic: str | None
    entities: list[str]
    pending_questions: list[dict[str, Any]]
    window: list[WindowMessagePublic]
    context_account: dict[str, Any] | None

    @classmethod
    def of(cls, view: ThreadView) -> ThreadDetail:
        """Build from the service's ThreadView."""
        return cls(
            thread=ThreadPublic.of(view.info),
            slots={name: SlotPublic.of(name, slot) for name, slot in view.slots.items()},
            summary_l1=[dict(chunk) for chunk in view.summary_l1],
            summary_l2=dict(view.summary_l2) if view.summary_l2 else None,
            topic=view.topic,
            entities=list(view.entities),
            pending_questions=[dict(q) for q in view.pending_questions],
            window=[
                WindowMessagePublic(
                    role=m.role, content=m.content, turn=m.turn, timestamp=m.timestamp
                )
                for m in view.window
            ],
            context_account=dict(view.context_account) if view.context_account else None,
        )


class MessageCreate(_Request):
    """Body of POST /threads/{thread_id}/messages: one user turn and its generation knobs."""

    content: StrictStr = Field(description="The user's message.")
    stream: StrictBool = Field(default=False, description="Answer as server-sent events.")
    profile: ProfileName | None = Field(
        default=None, description="Generation profile (``GET /profiles`` lists them)."
    )
    temperature: float | None = Field(default=None, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, allow_inf_nan=False)
    max_tokens: int | None = Field(default=None, ge=1, le=32_768)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stop: StrictStr | list[StrictStr] | None = Field(
        default=None, description=f"Up to {MAX_STOP_SEQUENCES} stop sequences."
    )
    user_id: StrictStr | None = Field(default=None, min_length=1, max_length=128)

    @field_validator("content")
    @classmethod
    def _content_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("content must not be empty")
        return value

    @field_validator("stop")
    @classmethod
    def _stop_sequences(cls, value: str | list[str] | None) -> list[str] | None:
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else list(value)
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
        if any(not s for s in stops):
            raise ValueError("stop sequences must not be empty")
        return stops or None


class PromptTokensDetails(BaseModel):
    """OpenAI's breakdown of the prompt tokens."""

    cached_tokens: int = 0
    """Prompt tokens whose KV cache was reused from an earlier call (a thread's unchanged
    prefix), not computed again."""


class Usage(BaseModel):
    """Tokens of one turn or completion, in the model's own tokens."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)

    @classmethod
    def of(cls, counts: Mapping[str, int]) -> Usage:
        """Build from the service's counts (``total_tokens`` defaults to their sum)."""
        prompt = int(counts.get("prompt_tokens", 0))
        completion = int(counts.get("completion_tokens", 0))
        return cls(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=int(counts.get("total_tokens", prompt + completion)),
            prompt_tokens_details=PromptTokensDetails(
                cached_tokens=int(counts.get("cached_tokens", 0))
            ),
        )


class ReplyPublic(BaseModel):
    """The assistant's reply to one turn."""

    thread_id: str
    turn: int
    reply: str
    finish_reason: str
    usage: Usage
    context_account: dict[str, Any] | None

    @classmethod
    def of(cls, result: TurnResult) -> ReplyPublic:
        """Build from the service's TurnResult."""
        return cls(
            thread_id=result.thread_id,
            turn=result.turn,
            reply=result.reply,
            finish_reason=result.finish_reason,
            usage=Usage.of(result.usage),
            context_account=dict(result.context_account) if result.context_account else None,
        )


class CheckpointPublic(BaseModel):
    """One checkpoint of a thread."""

    checkpoint_id: str
    created_at: str
    step: int
    source: str
    turn: int
    next: list[str]
    messages: int

    @classmethod
    def of(cls, view: CheckpointView) -> CheckpointPublic:
        """Build from the service's CheckpointView."""
        return cls.model_validate(view, from_attributes=True)


class HistoryPublic(BaseModel):
    """Checkpoints of a thread, newest first."""

    data: list[CheckpointPublic]


class SlotsPatch(_Request):
    """Body of PATCH /threads/{thread_id}/slots: a value corrects a slot, null clears it."""

    slots: dict[StrictStr, StrictStr | None] = Field(min_length=1)

    @field_validator("slots")
    @classmethod
    def _valid_slots(cls, value: dict[str, str | None]) -> dict[str, str | None]:
        for name, slot_value in value.items():
            if not name.strip() or len(name) > MAX_SLOT_NAME_CHARS:
                raise ValueError(f"slot names must be 1 to {MAX_SLOT_NAME_CHARS} characters")
            if slot_value is not None and (
                not slot_value.strip() or len(slot_value) > MAX_SLOT_VALUE_CHARS
            ):
                raise ValueError(
                    f"slot values must be 1 to {MAX_SLOT_VALUE_CHARS} characters (null clears)"
                )
        return value


class SlotsPublic(BaseModel):
    """A thread's slots after a correction."""

    slots: dict[str, SlotPublic]


class ProfilePublic(BaseModel):
    """A generation profile: the sampling settings a turn that names it starts from."""

    name: str
    temperature: float = Field(description="0 decodes greedily.")
    top_p: float
    top_k: int = Field(description="0 turns top-k filtering off.")
    repetition_penalty: float
    max_new_tokens: int = Field(description="Reply length limit; a request's max_tokens wins.")


class ProfileList(BaseModel):
    """The generation profiles a request may name, and the one a request without a name gets."""

    default: str
    data: list[ProfilePublic]


class HealthPublic(BaseModel):
    """Liveness answer."""

    status: Literal["ok"]


class EnginePublic(BaseModel):
    """The inference engine generation is sent to, as the last readiness check found it."""

    model: str
    reachable: bool
    serves_model: bool


class ReadinessPublic(BaseModel):
    """Readiness answer: each check and whether it passed."""

    status: Literal["ready", "not_ready"]
    checks: dict[str, bool]
    detail: dict[str, str] = Field(default_factory=dict)
    engine: EnginePublic | None = None
    """Present when replies come from an inference engine (``STEADYCHAT_ENGINE_URL``)."""
