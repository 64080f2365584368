"""The unified tool-calling record (docs/FORMATS.md §2): its drop reasons and the checks the converters
(`converters.py`) share.

A record::

    {"id": "toolace-12@5", "source": "toolace", "system": "<preamble>" | None,
     "tools": [tool dict, ...],
     "messages": [{"role": "user" | "assistant" | "tool", "content": str, "tool_calls"?: [{name, arguments}]}, ...],
     "answer": [{"name": str, "arguments": {...}}, ...],   # the calls the next assistant turn must make
     "multi_turn": bool,                                    # False when the context is one user message
     "tool_block"?: str}   # only from a Tool-N1 parquet worded otherwise: its tool block, `{tools}` for the list

Ids are `<source>-<row>` for one-example rows and `<source>-<row>@<turn>` for examples cut from a dialogue
(`<turn>` = index of the answering turn), so `group_of(id)` keeps a dialogue's examples together in a split.
An earlier assistant call has `content` "" and its calls in `tool_calls`. `system` None means "the Tool-N1 preamble".

Converters never raise on a bad row: they drop it and count the reason (`Converted.dropped`). A count is of the
unit that was lost: a row (a whole xLAM row or dialogue) for row-level problems, an example for a call turn.
Unreadable input files raise `DataError` naming the file (and line, where there is one).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

# Drop reasons.
NOT_AN_OBJECT = "row_not_an_object"
MISSING_FIELD = "missing_field"  # reported as "missing_field:<key>"
TOOLS_NOT_JSON = "tools_not_json"
TOOLS_NOT_IN_SYSTEM = "tools_not_in_system"
NO_TOOLS = "no_tools"
BAD_TOOL = "bad_tool_entry"
ANSWER_NOT_JSON = "answer_not_json"
BAD_CALL = "bad_call"
UNKNOWN_TOOL = "unknown_tool"
CALL_UNPARSABLE = "call_unparsable"
UNKNOWN_ROLE = "unknown_role"
NO_CALL_TURN = "no_call_turn"
EMPTY_CONTEXT = "empty_context"
PROMPT_NOT_REPRODUCIBLE = "prompt_not_reproducible"

ROLE_ALIASES = {
    "user": "user", "human": "user",
    "assistant": "assistant", "gpt": "assistant", "function_call": "assistant",
    "tool": "tool", "observation": "tool", "function_response": "tool",
}


class DataError(ValueError):
    """An input that cannot be read at all (missing file, broken JSON/parquet, unknown source)."""


@dataclass
class Converted:
    records: list[dict]
    dropped: Counter = field(default_factory=Counter)
    rows: int = 0  # input rows (xLAM rows, dialogues, conversations) read


def group_of(record_id: str) -> str:
    """The dialogue an example comes from (examples of one dialogue share it)."""
    return record_id.split("@", 1)[0]


def make_record(record_id: str, source: str, system: str | None, tools: list, messages: list,
                answer: list, tool_block: str | None = None) -> dict:
    single = len(messages) == 1 and messages[0]["role"] == "user"
    record = {"id": record_id, "source": source, "system": system, "tools": tools, "messages": messages,
              "answer": answer, "multi_turn": not single}
    if tool_block is not None:  # a tool block worded otherwise than the reference's (data/prompts.py)
        record["tool_block"] = tool_block
    return record


def decode_json_field(value, *, want: type):
    """A field that holds JSON text (or, from a parsed source, the value itself); None when unusable."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            return None
    return value if isinstance(value, want) else None


def tools_problem(tools: list) -> str | None:
    if not tools:
        return NO_TOOLS
    if not all(isinstance(t, dict) and isinstance(t.get("name"), str) for t in tools):
        return BAD_TOOL
    return None


def normalize_call(call) -> dict | None:
    """A call as {"name": str, "arguments": dict}, decoding arguments given as a JSON string; None if invalid."""
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return None
    arguments = decode_json_field(call.get("arguments"), want=dict)
    if arguments is None:
        return None
    return {"name": call["name"], "arguments": arguments}


def normalize_calls(calls) -> list[dict] | None:
    """A list (or one object) of calls, normalised; None when any item is invalid."""
    if isinstance(calls, dict):
        calls = [calls]
    if not isinstance(calls, list):
        return None
    normalized = [normalize_call(c) for c in calls]
    return None if any(c is None for c in normalized) else normalized


def decode_calls(value) -> tuple[list[dict] | None, str | None]:
    """(calls, None) from a JSON-text (or already decoded) list or object of calls, else (None, drop reason)."""
    decoded = decode_json_field(value, want=(list, dict))
    if decoded is None:
        return None, ANSWER_NOT_JSON
    calls = normalize_calls(decoded)
    return (calls, None) if calls is not None else (None, BAD_CALL)


def answer_problem(answer: list, tools: list) -> str | None:
    """Why an (already normalised) answer cannot be used with these tools, or None."""
    names = {t["name"] for t in tools}
    return UNKNOWN_TOOL if any(call["name"] not in names for call in answer) else None


def missing_fields(row, keys: Iterable[str]) -> str | None:
    if not isinstance(row, dict):
        return NOT_AN_OBJECT
    for key in keys:
        if key not in row or row[key] is None:
            return f"{MISSING_FIELD}:{key}"
    return None
