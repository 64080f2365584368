"""Render a unified record (docs/FORMATS.md §2) into the Tool-N1 prompt: chat messages, text, token ids.

The reference prompt (assets/prompts/README.md): system message = preamble + tool block with one
`json.dumps({"type": "function", "function": tool})` per line; the messages go through the Qwen2.5 chat template
WITHOUT its `tools=` argument; an earlier assistant call is an assistant turn whose content is the JSON string
literal of the calls' JSON text; tool results are `tool` turns (the template wraps them in `<tool_response>`).
`native_tools=True` instead hands the tools to the template's own `tools=` branch and earlier calls to its
`tool_calls` branch (then the system message is the record's preamble alone).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable

from tooln1_jax import assets, logs

DEFAULT_PREAMBLE = assets.path("prompts", "tooln1_raw_system.txt").read_text(encoding="utf-8")
TOOL_BLOCK = assets.path("prompts", "tooln1_tool_block.txt").read_text(encoding="utf-8")
PROMPT_TOO_LONG = "prompt_too_long"
_ENCODE_CHUNK = 256  # prompts tokenized per call


def preamble_of(record: dict) -> str:
    """The record's system preamble; the Tool-N1 default when it has none (None or empty)."""
    return record.get("system") or DEFAULT_PREAMBLE


def tool_lines(tools: list[dict]) -> str:
    """The tool list as the reference writes it: one JSON object per line, no trailing newline."""
    return "\n".join(json.dumps({"type": "function", "function": tool}) for tool in tools)


def system_prompt(tools: list[dict], preamble: str | None = None, tool_block: str | None = None) -> str:
    """Preamble (default: the Tool-N1 one) followed by the tool block (default: the reference's; a record from
    the release's parquet may carry its own wording) with the tools filled in."""
    return (preamble or DEFAULT_PREAMBLE) + (tool_block or TOOL_BLOCK).replace("{tools}", tool_lines(tools))


def _history_message(message: dict, native_tools: bool) -> dict:
    role = message["role"]
    if role not in ("user", "assistant", "tool"):
        raise ValueError(f"message role must be user, assistant or tool, got {role!r}")
    calls = message.get("tool_calls")
    if role != "assistant" or not calls:
        return {"role": role, "content": message["content"]}
    if native_tools:
        return {"role": "assistant", "content": message.get("content") or "",
                "tool_calls": [{"type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                               for c in calls]}
    calls_json = json.dumps([{"name": c["name"], "arguments": c["arguments"]} for c in calls])
    return {"role": "assistant", "content": json.dumps(calls_json)}


def chat_messages(record: dict, native_tools: bool = False) -> list[dict]:
    """System message and the record's history, in the chat-template form of the reference prompt."""
    system = (preamble_of(record) if native_tools
              else system_prompt(record["tools"], preamble_of(record), record.get("tool_block")))
    return [{"role": "system", "content": system}] + [_history_message(m, native_tools) for m in record["messages"]]


def render(record: dict, tokenizer, native_tools: bool = False) -> str:
    """The full prompt text, ending with the generation prompt `<|im_start|>assistant\\n`."""
    tools = [{"type": "function", "function": tool} for tool in record["tools"]] if native_tools else None
    return tokenizer.apply_chat_template(chat_messages(record, native_tools), tools=tools, tokenize=False,
                                         add_generation_prompt=True)


def encode(record: dict, tokenizer, native_tools: bool = False) -> list[int]:
    """Token ids of `render(record, tokenizer, native_tools)` (no extra special tokens)."""
    return tokenizer(render(record, tokenizer, native_tools), add_special_tokens=False)["input_ids"]


def encode_records(records: Iterable[dict], tokenizer, *, max_prompt_tokens: int = 4096,
                   native_tools: bool = False) -> tuple[list[dict], Counter]:
    """Copies of the records with `prompt_ids` added; prompts over `max_prompt_tokens` are dropped and counted."""
    records = list(records)
    kept, dropped = [], Counter()
    with logs.progress(len(records), "tokenize", "prompt") as bar:
        for start in range(0, len(records), _ENCODE_CHUNK):
            chunk = records[start:start + _ENCODE_CHUNK]
            texts = [render(r, tokenizer, native_tools) for r in chunk]
            for record, ids in zip(chunk, tokenizer(texts, add_special_tokens=False)["input_ids"]):
                if len(ids) > max_prompt_tokens:
                    dropped[PROMPT_TOO_LONG] += 1
                else:
                    kept.append({**record, "prompt_ids": list(ids)})
            bar.update(len(chunk))
    return kept, dropped
