"""Loads the chat model named by the settings: a hub id, a local folder, or the built tiny model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from graph.chat_model import QwenChatModel
from graph.engine import EngineSettings
from graph.settings import Settings

__all__ = ["load_chat_model", "resolve_device", "resolve_dtype"]

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

    ``model="tiny"`` builds the offline tiny model into ``data_dir/models/tiny`` on first use.
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
        OSError: The model cannot be found or downloaded.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source: str | Path = settings.model
    if settings.model == "tiny":
        from graph.tiny_model import build_tiny_model

        source = build_tiny_model(settings.tiny_model_dir())
    elif _looks_like_path(settings.model) and not Path(settings.model).is_dir():
        raise ValueError(f"model folder {settings.model!r} does not exist")

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
    tokenizer = AutoTokenizer.from_pretrained(source)
    model: Any = AutoModelForCausalLM.from_pretrained(source, **kwargs)
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


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).is_absolute()
