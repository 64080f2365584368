"""`tooln1 generate`: sample replies to chat conversations read from a JSONL file; one JSON line per reply on stdout.

Each line of `--messages` is a list of chat messages, or an object `{"messages": [...], "tools": [...]}` whose
`tools` (possibly empty) replace the `--tools` file for that line. A conversation with tools gets the Tool-N1
prompt (its system message, if it starts with one, replaces the Tool-N1 preamble; the tool block follows); one
without tools goes through the tokenizer's chat template as it is. A message's `role`, `content` and (assistant)
`tool_calls` are read; other keys are ignored, as the Qwen2.5 chat template ignores them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import jax

from tooln1_jax import assets, checkpoint, logs, parallel
from tooln1_jax.data import prompts
from tooln1_jax.rollout import sampler

ROLES = ("system", "user", "assistant", "tool")
LINE_KEYS = ("messages", "tools")


@dataclasses.dataclass(frozen=True)
class Conversation:
    messages: list[dict]
    tools: list[dict] | None  # None or empty: no tools, the plain chat template


def _normalise_tools(tools, where: str) -> list[dict]:
    """Function specs as the Tool-N1 prompt writes them: `{"name", ...}`; OpenAI-style wrappers are unwrapped."""
    if not isinstance(tools, list):
        raise ValueError(f"{where}: tools must be a JSON list, got {type(tools).__name__}")
    out = []
    for i, tool in enumerate(tools):
        if isinstance(tool, dict) and tool.get("type") == "function" and isinstance(tool.get("function"), dict):
            tool = tool["function"]
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise ValueError(f"{where}: tool {i} must be an object with a string 'name', got {json.dumps(tool)[:80]}")
        out.append(tool)
    return out


def read_tools(path: str | Path | None) -> list[dict] | None:
    """The `--tools` file: a JSON list of function specs (None when no file is given)."""
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--tools: {path} not found")
    try:
        tools = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    return _normalise_tools(tools, str(path))


def _check_calls(calls, where: str) -> list[dict]:
    """An assistant turn's earlier calls as `[{"name", "arguments"}]` (OpenAI-style wrappers unwrapped)."""
    if not isinstance(calls, list):
        raise ValueError(f"{where}: tool_calls must be a list")
    out = []
    for j, call in enumerate(calls):
        if isinstance(call, dict) and isinstance(call.get("function"), dict):
            call = call["function"]
        if not isinstance(call, dict) or not isinstance(call.get("name"), str) or \
                not isinstance(call.get("arguments"), dict):
            raise ValueError(f"{where}: tool call {j} must be an object with a string 'name' and an object 'arguments'")
        out.append({"name": call["name"], "arguments": call["arguments"]})
    return out


def _check_messages(messages, where: str) -> list[dict]:
    """Copies of the messages, checked: known roles, string contents, a system message only first."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: expected a non-empty list of chat messages")
    out = []
    for i, message in enumerate(messages):
        at = f"{where}: message {i}"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ValueError(f"{at} must be an object with role one of {', '.join(ROLES)}")
        role, content = message["role"], message.get("content")
        if role == "system" and i > 0:
            raise ValueError(f"{at}: a system message may only come first")
        calls = message.get("tool_calls")
        if calls and role != "assistant":
            raise ValueError(f"{at}: only assistant messages carry tool_calls")
        if not isinstance(content, str) and not (calls and content is None):
            raise ValueError(f"{at} ({role}) needs a string 'content'")
        checked = {"role": role, "content": content or ""}
        if calls:
            checked["tool_calls"] = _check_calls(calls, at)
        out.append(checked)
    if out[-1]["role"] == "assistant":
        raise ValueError(f"{where}: the conversation ends with an assistant message; nothing to reply to")
    return out


def parse_line(text: str, where: str, default_tools: list[dict] | None) -> Conversation:
    """One JSONL line: a list of messages, or {"messages": [...], "tools": [...]} (tools override the default)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
    tools = default_tools
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(LINE_KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown key {unknown[0]!r} (a line object has {' and '.join(LINE_KEYS)})")
        if "tools" in value:
            tools = _normalise_tools(value["tools"], where)
        value = value.get("messages")
    return Conversation(_check_messages(value, where), tools)


def read_conversations(path: str | Path, default_tools: list[dict] | None = None) -> list[Conversation]:
    """Every non-blank line of the `--messages` file, in order; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--messages: {path} not found")
    with path.open(encoding="utf-8") as f:
        conversations = [parse_line(line, f"{path}:{number}", default_tools)
                         for number, line in enumerate(f, start=1) if line.strip()]
    if not conversations:
        raise ValueError(f"{path}: no conversations (the file is empty)")
    return conversations


def build_prompt(conversation: Conversation, tokenizer) -> str:
    """The prompt text, ending with the generation prompt `<|im_start|>assistant\\n`."""
    messages = conversation.messages
    if not conversation.tools:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    record = {"id": "generate", "source": "generate", "system": system, "tools": conversation.tools,
              "messages": messages[1:] if system is not None else messages, "answer": []}
    return prompts.render(record, tokenizer)


def build_prompts(conversations: Sequence[Conversation], tokenizer) -> list[str]:
    return [build_prompt(c, tokenizer) for c in conversations]


def reply_rows(rollout, tokenizer, stop_ids: Sequence[int], num_samples: int, first_index: int = 0) -> list[dict]:
    """One output row per rollout row: the reply without its stop token (special tokens kept); `num_tokens`
    counts the generated tokens including the stop token."""
    texts = tokenizer.batch_decode(sampler.reply_ids(rollout, stop_ids), skip_special_tokens=False)
    return [{"index": first_index + int(rollout.prompt_index[row]), "sample": row % num_samples,  # samples contiguous
             "reply": texts[row], "finish_reason": str(rollout.finish_reason[row]),
             "num_tokens": int(rollout.lengths[row])} for row in range(len(texts))]


def run(args: argparse.Namespace, out=None) -> None:
    """Read and check every conversation, load the model, generate batch by batch, print JSON lines to `out`."""
    out = out or sys.stdout
    for flag, value in (("--batch-size", args.batch_size), ("--num-samples", args.num_samples),
                        ("--max-new-tokens", args.max_new_tokens)):
        if value < 1:  # before the model loads
            raise ValueError(f"{flag} must be >= 1, got {value}")
    conversations = read_conversations(args.messages, read_tools(args.tools))
    tokenizer = assets.load_tokenizer(args.model)
    prompt_ids = [tokenizer(text, add_special_tokens=False)["input_ids"]
                  for text in build_prompts(conversations, tokenizer)]
    mesh = parallel.make_mesh(args.mesh) if getattr(args, "mesh", None) else None
    config, params = checkpoint.load_model(args.model, mesh=mesh, dtype=args.dtype)
    params = sampler.prepare(config, params)  # the decode layout, made once (the loaded tree is dropped)
    stop_ids = sampler.DEFAULT_STOP_IDS
    key = jax.random.key(args.seed)
    with logs.progress(len(prompt_ids), "generate", "prompt") as bar:
        for start in range(0, len(prompt_ids), args.batch_size):
            batch = prompt_ids[start:start + args.batch_size]
            rollout = sampler.generate(config, params, batch, num_samples=args.num_samples,
                                       max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                       top_p=args.top_p, top_k=args.top_k, stop_ids=stop_ids, rng=key,
                                       prompt_seeds=range(start, start + len(batch)))  # independent of batching
            for row in reply_rows(rollout, tokenizer, stop_ids, args.num_samples, start):
                print(json.dumps(row, ensure_ascii=False), file=out, flush=True)
            bar.update(len(batch))
