"""The converters from xLAM, ToolACE, ShareGPT tool conversations and the Tool-N1 processed parquet to the unified
record (`records.py`). Converters never raise on a bad row: they drop it and count the reason (`Converted.dropped`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from tqdm.auto import tqdm

from tooln1_jax.data import prompts
from tooln1_jax.data.python_calls import parse_python_calls
from tooln1_jax.data.raw_files import load_from_hub, read_rows
from tooln1_jax.data.records import (
    BAD_CALL, CALL_UNPARSABLE, EMPTY_CONTEXT, MISSING_FIELD, NO_CALL_TURN, PROMPT_NOT_REPRODUCIBLE, ROLE_ALIASES,
    TOOLS_NOT_IN_SYSTEM, TOOLS_NOT_JSON, UNKNOWN_ROLE, Converted, DataError, answer_problem, decode_calls,
    decode_json_field, make_record, missing_fields, normalize_calls, tools_problem,
)


def from_xlam(rows: Iterable) -> Converted:
    """xLAM rows: `query`, and `tools` / `answers` as JSON strings; one row = one single-turn example."""
    out = Converted([])
    for index, row in enumerate(tqdm(rows, desc="xlam", unit="row", disable=None)):
        out.rows += 1
        problem = missing_fields(row, ("query", "tools", "answers"))
        tools = answer = None
        if problem is None:
            tools = decode_json_field(row["tools"], want=list)
            problem = TOOLS_NOT_JSON if tools is None else tools_problem(tools)
        if problem is None:
            answer, problem = decode_calls(row["answers"])
        problem = problem or answer_problem(answer, tools)
        if problem:
            out.dropped[problem] += 1
            continue
        messages = [{"role": "user", "content": str(row["query"])}]
        out.records.append(make_record(f"xlam-{row.get('id', index)}", "xlam", None, tools, messages, answer))
    return out


_TOOLACE_MARKER = "JSON format that you can invoke:\n"
_TOOLACE_END = "\nShould you decide to return the function call(s)"


def toolace_tools(system: str) -> tuple[str, list | None] | None:
    """(preamble up to the marker, decoded tool list or None) from a ToolACE system text; None if no list."""
    start = system.find(_TOOLACE_MARKER)
    if start == -1:
        return None
    start += len(_TOOLACE_MARKER)
    end = system.find(_TOOLACE_END, start)
    if end == -1:
        return None
    listing = system[start:end].strip().removesuffix(".")  # the list is followed by a full stop
    return system[:start], decode_json_field(listing, want=list)


def _dialogue_examples(out: Converted, source: str, row_index: int, system: str | None, tools: list,
                       turns: list, parse_call: Callable[[str, str], tuple[list | None, str | None]]) -> None:
    """One example per assistant call turn, its context all earlier turns; counts what it cannot use.

    `parse_call(value, from_)` gives (calls, None) for a call turn, (None, reason) for a broken call turn (dropped,
    kept as text in later contexts), or (None, None) for plain text.
    """
    messages, made_any_call = [], False
    for turn_index, turn in enumerate(turns):
        role, value = ROLE_ALIASES[turn["from"]], str(turn["value"])
        calls, problem = parse_call(value, turn["from"]) if role == "assistant" else (None, None)
        made_any_call = made_any_call or calls is not None or problem is not None  # a broken call turn counts
        if calls is None:
            messages.append({"role": role, "content": value})
        else:
            problem = EMPTY_CONTEXT if not messages else answer_problem(calls, tools)
            if not problem:
                record_id = f"{source}-{row_index}@{turn_index}"
                out.records.append(make_record(record_id, source, system, tools, list(messages), calls))
            messages.append({"role": "assistant", "content": "", "tool_calls": calls})
        if problem:
            out.dropped[problem] += 1
    if not made_any_call:
        out.dropped[NO_CALL_TURN] += 1


def _turns_problem(turns) -> str | None:
    if not isinstance(turns, list) or not turns:
        return f"{MISSING_FIELD}:conversations"
    for turn in turns:
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            return f"{MISSING_FIELD}:from/value"
        if turn["from"] not in ROLE_ALIASES:
            return UNKNOWN_ROLE
    return None


_CALL_LIKE = re.compile(r"\[\s*[^\s\[\](){}'\",=][^\[\](){}'\",=]*\(.*\)\s*\]", re.DOTALL)


def _toolace_call(value: str, role: str) -> tuple[list | None, str | None]:
    if not _CALL_LIKE.fullmatch(value.strip()):  # plain text
        return None, None
    calls = parse_python_calls(value)
    return (calls, None) if calls is not None else (None, CALL_UNPARSABLE)


def from_toolace(rows: Iterable) -> Converted:
    """ToolACE dialogues: tools cut out of `system`, one example per assistant call turn."""
    out = Converted([])
    for index, row in enumerate(tqdm(rows, desc="toolace", unit="dialogue", disable=None)):
        out.rows += 1
        problem = missing_fields(row, ("system", "conversations")) or _turns_problem(row["conversations"])
        cut = None
        if problem is None:
            cut = toolace_tools(str(row["system"]))
            problem = TOOLS_NOT_IN_SYSTEM if cut is None else (TOOLS_NOT_JSON if cut[1] is None else None)
        problem = problem or tools_problem(cut[1])
        if problem:
            out.dropped[problem] += 1
            continue
        preamble, tools = cut
        _dialogue_examples(out, "toolace", index, preamble, tools, row["conversations"], _toolace_call)
    return out


def _sharegpt_call(value: str, role: str) -> tuple[list | None, str | None]:
    if role != "function_call":
        return None, None
    calls, problem = decode_calls(value)
    return (calls, None) if calls else (None, problem or BAD_CALL)  # an empty call list is no call


def from_sharegpt(rows: Iterable) -> Converted:
    """ShareGPT tool conversations (LLaMA-Factory / glaive): `function_call` turns hold JSON calls."""
    out = Converted([])
    for index, row in enumerate(tqdm(rows, desc="sharegpt", unit="conversation", disable=None)):
        out.rows += 1
        problem = missing_fields(row, ("conversations", "tools")) or _turns_problem(row["conversations"])
        tools = None
        if problem is None:
            tools = decode_json_field(row["tools"], want=list)
            problem = TOOLS_NOT_JSON if tools is None else tools_problem(tools)
        if problem:
            out.dropped[problem] += 1
            continue
        system = row.get("system") or None
        _dialogue_examples(out, "sharegpt", index, system, tools, row["conversations"], _sharegpt_call)
    return out


def _tools_from_system_text(system: str) -> tuple[str, list, str] | None:
    """(preamble, tools, tool block with `{tools}` in place of the tool lines) from a rendered Tool-N1 system
    text; None when it does not have that shape."""
    block_start = system.find("# Tool\n\n")
    start = system.find("<tools>\n", block_start)
    end = system.rfind("\n</tools>")
    if block_start == -1 or start == -1 or end < start:
        return None
    tools = []
    for line in system[start + len("<tools>\n"):end].split("\n"):
        spec = decode_json_field(line, want=dict)
        if spec is None or not isinstance(spec.get("function"), dict):
            return None
        tools.append(spec["function"])
    return system[:block_start], tools, system[block_start:start + len("<tools>\n")] + "{tools}" + system[end:]


def _tooln1_history(prompt: list) -> list[dict] | None:
    messages = []
    for message in prompt:
        role, content = message.get("role"), message.get("content")
        if role not in ("user", "assistant", "tool") or not isinstance(content, str):
            return None
        calls = None
        if role == "assistant" and content.startswith('"'):  # an earlier call: a JSON string literal
            calls = normalize_calls(decode_json_field(decode_json_field(content, want=str), want=(list, dict)))
        if calls:
            messages.append({"role": "assistant", "content": "", "tool_calls": calls})
        else:
            messages.append({"role": role, "content": content})
    return messages


def from_tooln1(rows: Iterable) -> Converted:
    """Tool-N1 processed parquet rows (`prompt`, `reward_model.ground_truth`, `extra_info`).

    The record is rebuilt from the rendered `prompt`. A tool block worded otherwise than the reference's (the
    release's parquet carries the older "You are provided with function signatures within <tools></tools> XML
    tags:") is kept as the record's `tool_block`, so the prompt is the row's own; a row whose prompt this package
    would still not render identically (e.g. tool lines not written as `json.dumps` writes them) is dropped as
    `prompt_not_reproducible`.
    """
    out = Converted([])
    for index, row in enumerate(tqdm(rows, desc="tooln1", unit="row", disable=None)):
        out.rows += 1
        problem = missing_fields(row, ("prompt", "reward_model"))
        prompt = row["prompt"] if problem is None else None
        if problem is None and (not isinstance(prompt, list) or not prompt or not isinstance(prompt[0], dict)
                                or prompt[0].get("role") != "system"):
            problem = f"{MISSING_FIELD}:prompt[0].system"
        parts = messages = answer = None
        if problem is None:
            parts = _tools_from_system_text(str(prompt[0].get("content")))
            problem = TOOLS_NOT_IN_SYSTEM if parts is None else tools_problem(parts[1])
        if problem is None:
            truth = row["reward_model"].get("ground_truth") if isinstance(row["reward_model"], dict) else None
            answer, problem = decode_calls(truth)
        if problem is None:
            messages = _tooln1_history(prompt[1:])
            problem = (UNKNOWN_ROLE if messages is None else EMPTY_CONTEXT if not messages
                       else answer_problem(answer, parts[1]))
        if problem is None:
            extra = row.get("extra_info") if isinstance(row.get("extra_info"), dict) else {}
            suffix = f"{extra['split']}-{extra['index']}" if {"split", "index"} <= set(extra) else index
            tool_block = parts[2] if parts[2] != prompts.TOOL_BLOCK else None
            record = make_record(f"tooln1-{suffix}", "tooln1", parts[0], parts[1], messages, answer, tool_block)
            expected = [{"role": m["role"], "content": m["content"]} for m in prompt]
            if prompts.chat_messages(record) != expected:
                problem = PROMPT_NOT_REPRODUCIBLE
        if problem:
            out.dropped[problem] += 1
            continue
        out.records.append(record)
    return out


CONVERTERS: dict[str, Callable[[Iterable], Converted]] = {
    "xlam": from_xlam, "toolace": from_toolace, "sharegpt": from_sharegpt, "tooln1": from_tooln1,
}
SOURCES = tuple(CONVERTERS)


def convert(kind: str, location: str, *, hub_loader: Callable[[str, str], list] = load_from_hub) -> Converted:
    """Read `location` (file, directory or hub id) and convert it with the `kind` converter."""
    if kind not in CONVERTERS:
        raise DataError(f"unknown source kind {kind!r}; expected one of {SOURCES}")
    return CONVERTERS[kind](read_rows(location, hub_loader=hub_loader))
