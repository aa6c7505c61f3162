"""Prompt formats for models whose GGUF has no usable chat template.

``mistral-instruct-system``: Mistral/Mixtral ``[INST]`` format with the system message folded
into the first user turn and consecutive same-role turns merged (llama-cpp-python's
``mistral-instruct`` format silently drops system messages).
``zephyr``: TinyLlama-Chat.  ``chatml``: ``<|im_start|>`` models without a template.
``gguf`` (the GGUF's own Jinja template) is rendered by the loaded model, which holds it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from utils.llm_integration.spec import Message


def merge_turns(messages: Sequence[Message]) -> list[dict[str, str]]:
    """Fold system messages into the next user turn and merge consecutive same-role turns.

    The result alternates user/assistant, starting with user, as ``[INST]`` formats require.
    """
    system_parts: list[str] = []
    turns: list[dict[str, str]] = []
    for msg in messages:
        role, content = msg["role"], msg["content"]
        if role == "system":
            system_parts.append(content)
            continue
        if role not in ("user", "assistant"):
            raise ValueError(f"unsupported chat role {role!r}")
        if role == "user" and system_parts:
            content = "\n\n".join([*system_parts, content])
            system_parts = []
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += "\n\n" + content
        else:
            turns.append({"role": role, "content": content})
    if system_parts:  # system text with no user turn after it
        turns.append({"role": "user", "content": "\n\n".join(system_parts)})
    if turns and turns[0]["role"] == "assistant":
        turns.insert(0, {"role": "user", "content": ""})
    return turns


def format_mistral_instruct(messages: Sequence[Message]) -> str:
    """``[INST] system\\n\\nuser [/INST] assistant</s>[INST] user [/INST]`` (BOS added by the tokenizer)."""
    out: list[str] = []
    for turn in merge_turns(messages):
        if turn["role"] == "user":
            out.append(f"[INST] {turn['content']} [/INST]")
        else:
            out.append(f" {turn['content']}</s>")
    return "".join(out)


def format_zephyr(messages: Sequence[Message]) -> str:
    parts = [f"<|{m['role']}|>\n{m['content']}</s>\n" for m in messages]
    return "".join(parts) + "<|assistant|>\n"


def format_chatml(messages: Sequence[Message]) -> str:
    parts = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    return "".join(parts) + "<|im_start|>assistant\n"


# name -> (formatter, stop strings)
FIXED_FORMATS: dict[str, tuple[Callable[[Sequence[Message]], str], list[str]]] = {
    "mistral-instruct-system": (format_mistral_instruct, ["</s>", "[INST]"]),
    "zephyr": (format_zephyr, ["</s>", "<|user|>"]),
    "chatml": (format_chatml, ["<|im_end|>", "<|im_start|>"]),
}


def render_fixed(chat_format: str, messages: Sequence[Message]) -> tuple[str, list[str]]:
    """The prompt for ``messages`` in one of :data:`FIXED_FORMATS` and its stop strings."""
    formatter, stops = FIXED_FORMATS[chat_format]
    return formatter(messages), list(stops)
