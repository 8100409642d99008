"""Builds a tiny random-weight Qwen3 model with a ChatML tokenizer, for offline tests and demos."""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from pathlib import Path

__all__ = ["QWEN3_STYLE_CHAT_TEMPLATE", "build_tiny_model", "is_complete_model_dir"]

# Renders like Qwen3's template: ChatML turns, system anywhere, reasoning dropped from earlier
# assistant turns, an empty think block when thinking is switched off, and tools as Qwen3 has
# them: the function signatures in the leading system turn, an assistant's calls as
# <tool_call>{"name": ..., "arguments": ...}</tool_call>, tool results as <tool_response> blocks
# in a user turn.
QWEN3_STYLE_CHAT_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages and messages[0].role == 'system' %}"
    "{{- messages[0].content + '\\n\\n' }}"
    "{%- endif %}"
    "{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name "
    "and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\\n</tool_call><|im_end|>\\n\' }}'
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role not in ['system', 'user', 'assistant', 'tool'] %}"
    "{{- raise_exception('Unsupported role ' + message.role + ': only system, user, "
    "assistant and tool messages are accepted') }}"
    "{%- endif %}"
    "{%- set content = message.content if message.content is string else '' %}"
    "{%- if message.role == 'assistant' and '</think>' in content %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}"
    "{%- if tools and loop.first and message.role == 'system' %}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}"
    "{{- '<|im_start|>user' }}"
    "{%- endif %}"
    "{{- '\\n<tool_response>\\n' + content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- elif message.role == 'assistant' and message.tool_calls %}"
    "{{- '<|im_start|>assistant\\n' + content }}"
    "{%- for tool_call in message.tool_calls %}"
    "{%- if (loop.first and content) or not loop.first %}{{- '\\n' }}{%- endif %}"
    "{%- set call = tool_call.function if tool_call.function else tool_call %}"
    '{{- \'<tool_call>\\n{"name": "\' + call.name + \'", "arguments": \' }}'
    "{%- if call.arguments is string %}{{- call.arguments }}"
    "{%- else %}{{- call.arguments | tojson }}{%- endif %}"
    "{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_THINK = ["<think>", "</think>"]
_VOCABULARY = (
    "the a an and or but if then when what where who why how is are was were be been have has "
    "had do does did can could will would should may might must hello hi thanks please yes no "
    "order ticket email phone name date time today tomorrow yesterday week month year price "
    "help support account password reset refund delivery address number question answer "
    "model chat message reply system user assistant summary memory profile thread turn token "
    "my your our their his her its we you they i me us them this that these those here there "
    "good great fine bad new old big small first last next more less very much many some any"
)
# Common CJK characters so Chinese text gets merges of its own (byte-level BPE covers the rest).
_HANZI = (
    "的一是不了人我在有他这中大来上个国到说们为子和你地出道也时年得就那要下以生会自着去之过家"
    "学对可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见"
    "经头面公同三已老从动两长知民样现分将外但身些与高意进把法此实回二理美点月明其种声全工己话"
    "订单号码邮箱电话名字请问谢您客服退款地址时间今天明天帮助问题回答模型对话记忆摘要"
)


def _corpus(rng: random.Random, lines: int = 400) -> list[str]:
    vocabulary = _VOCABULARY.split()
    text: list[str] = []
    for _ in range(lines):
        words = [rng.choice(vocabulary) for _ in range(rng.randint(4, 14))]
        hanzi = "".join(rng.choice(_HANZI) for _ in range(rng.randint(2, 12)))
        digits = str(rng.randint(0, 10 ** rng.randint(1, 8)))
        text.append(f"{' '.join(words).capitalize()}, {hanzi}。 {digits}!")
    return text


def is_complete_model_dir(path: Path) -> bool:
    """Whether ``path`` holds a saved model, tokenizer and chat template.

    Args:
        path: A model folder.

    Returns:
        True when config, weights, tokenizer and chat template files are all present.
    """
    needed = ["config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]
    if not all((path / name).is_file() for name in needed):
        return False
    return any(path.glob("*.safetensors"))


def build_tiny_model(path: str | Path, *, seed: int = 0) -> Path:
    """Build a random-weight Qwen3ForCausalLM and byte-level BPE ChatML tokenizer at ``path``.

    The result loads with ``AutoModelForCausalLM``/``AutoTokenizer`` like a real checkpoint,
    so the whole transformers path runs offline. Its words are random. The same seed gives the
    same files; a folder that already holds a complete model is reused (its chat template
    brought up to date).

    Args:
        path: Target folder (created; written atomically through a sibling temp folder).
        seed: Seed for the training text and the weights.

    Returns:
        The model folder.
    """
    target = Path(path)
    if is_complete_model_dir(target):
        template = target / "chat_template.jinja"
        if template.read_text(encoding="utf-8") != QWEN3_STYLE_CHAT_TEMPLATE:
            # A folder built before the template learnt tools gets the current one.
            template.write_text(QWEN3_STYLE_CHAT_TEMPLATE, encoding="utf-8")
        return target
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(
            f"{target} exists and is not a complete model folder; remove it or pick another path"
        )

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    rng = random.Random(seed)
    tokenizer_core = Tokenizer(models.BPE())
    tokenizer_core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer_core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1200,
        min_frequency=2,
        special_tokens=_SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer_core.train_from_iterator(_corpus(rng), trainer=trainer)
    # Like Qwen3, the think tags are added tokens that decoding keeps (they are not "special").
    tokenizer_core.add_tokens(_THINK)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer_core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        model_max_length=8192,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = QWEN3_STYLE_CHAT_TEMPLATE

    pad_id = int(tokenizer.pad_token_id)
    eos_id = int(tokenizer.eos_token_id)
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        bos_token_id=pad_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    model = Qwen3ForCausalLM(config)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "steadychat_tiny.json").write_text(json.dumps({"seed": seed}))
        if target.exists():
            target.rmdir()
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if is_complete_model_dir(target):
            # Another process finished the same build first; its result is as good as ours.
            return target
        raise
    return target
