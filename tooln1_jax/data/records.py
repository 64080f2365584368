"""The unified tool-calling record (docs/FORMATS.md §2) and the converters that produce it.

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

import ast
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from tooln1_jax.data import prompts

SOURCES = ("xlam", "toolace", "sharegpt", "tooln1")
LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet")

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


# ---------------------------------------------------------------- reading raw files


def _read_json(path: Path) -> list:
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # one object per line in a .json file
            return _read_jsonl(path)
        raise DataError(f"{path}: line {e.lineno}, column {e.colno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of rows, got a {type(data).__name__}")
    return data


def _read_jsonl(path: Path) -> list:
    rows = []
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {lineno}, column {e.colno}: not valid JSON ({e.msg})") from None
    return rows


def _read_parquet(path: Path) -> list:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable parquet file ({e})") from None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: byte {e.start}: not UTF-8 text") from None


_READERS = {".json": _read_json, ".jsonl": _read_jsonl, ".parquet": _read_parquet}


def _read_local(path: Path) -> list:
    if path.is_dir():  # its parquet files (e.g. train/test.parquet), or its JSON / JSONL files
        files = sorted(p for p in path.iterdir() if p.suffix in LOCAL_SUFFIXES and p.is_file())
        parquet = [p for p in files if p.suffix == ".parquet"]
        if parquet:  # a prepare-data output directory: its stats.json is no data
            files = [p for p in files if p.suffix == ".parquet" or p.name != "stats.json"]
        if not files:
            raise DataError(f"{path}: directory holds no {'/'.join(LOCAL_SUFFIXES)} files")
        if parquet and len(parquet) < len(files):
            names = ", ".join(p.name for p in files[:6])
            raise DataError(f"{path}: directory mixes parquet and JSON files ({names}); give one kind per source")
        return [row for f in files for row in _read_local(f)]
    if path.suffix not in _READERS:
        raise DataError(f"{path}: unsupported file type {path.suffix!r} (expected one of {LOCAL_SUFFIXES})")
    return _READERS[path.suffix](path)


def _load_from_hub(name: str, split: str) -> list:
    import datasets

    return datasets.load_dataset(name, split=split).to_list()


def _looks_like_path(location: str) -> bool:
    return location.startswith((".", "/", "~")) or location.endswith(LOCAL_SUFFIXES) or location.count("/") != 1


def read_rows(location: str, *, split: str = "train",
              hub_loader: Callable[[str, str], list] = _load_from_hub) -> list:
    """Rows of a local .json / .jsonl / .parquet file (or a directory of them), else of a hub data set id."""
    path = Path(location).expanduser()
    if path.exists():
        return _read_local(path)
    if _looks_like_path(location):
        raise DataError(f"{location}: no such file or directory")
    try:
        return hub_loader(location, split)
    except Exception as e:  # noqa: BLE001 - any hub failure becomes one clear message
        raise DataError(f"{location!r} is not a local file or directory, and loading it from the hub failed "
                        f"({type(e).__name__}: {e})") from e


# ---------------------------------------------------------------- validation helpers


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


def _decode_json_field(value, *, want: type):
    """A field that holds JSON text (or, from a parsed source, the value itself); None when unusable."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            return None
    return value if isinstance(value, want) else None


def _tools_problem(tools: list) -> str | None:
    if not tools:
        return NO_TOOLS
    if not all(isinstance(t, dict) and isinstance(t.get("name"), str) for t in tools):
        return BAD_TOOL
    return None


def normalize_call(call) -> dict | None:
    """A call as {"name": str, "arguments": dict}, decoding arguments given as a JSON string; None if invalid."""
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return None
    arguments = _decode_json_field(call.get("arguments"), want=dict)
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
    decoded = _decode_json_field(value, want=(list, dict))
    if decoded is None:
        return None, ANSWER_NOT_JSON
    calls = normalize_calls(decoded)
    return (calls, None) if calls is not None else (None, BAD_CALL)


def answer_problem(answer: list, tools: list) -> str | None:
    """Why an (already normalised) answer cannot be used with these tools, or None."""
    names = {t["name"] for t in tools}
    return UNKNOWN_TOOL if any(call["name"] not in names for call in answer) else None


def _missing(row, keys: Iterable[str]) -> str | None:
    if not isinstance(row, dict):
        return NOT_AN_OBJECT
    for key in keys:
        if key not in row or row[key] is None:
            return f"{MISSING_FIELD}:{key}"
    return None


# ---------------------------------------------------------------- Python-syntax calls (ToolACE)


def _split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split at `sep` outside quotes and brackets."""
    parts, start, depth, quote, i = [], 0, 0, None, 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1  # skip the escaped character
            elif ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


_CALL_NAME = re.compile(r"[^\s\[\](){}'\",=][^\[\](){}'\",=]*")


def _literal(node: ast.expr):
    value = ast.literal_eval(node)
    return json.loads(json.dumps(value, allow_nan=False))  # tuples -> lists; sets, bytes, inf -> error


def parse_python_calls(text: str) -> list[dict] | None:
    """`[f(a=1, b="x"), g.h(c=[1, 2])]` -> [{"name": "f", "arguments": {...}}, ...]; None unless it is one.

    Names may contain spaces, dots and dashes (ToolACE has e.g. `Get Stock Price(...)`); arguments must be
    keyword arguments whose values are Python literals, read with `ast` (never evaluated).
    """
    text = text.strip()
    if not (text.startswith("[") and text.endswith("]")) or not text[1:-1].strip():
        return None
    calls = []
    for chunk in _split_top_level(text[1:-1]):
        name, paren, rest = chunk.strip().partition("(")
        name = name.strip()
        if not paren or not _CALL_NAME.fullmatch(name):
            return None
        try:
            node = ast.parse("f(" + rest, mode="eval").body
            if not isinstance(node, ast.Call) or node.args or any(k.arg is None for k in node.keywords):
                return None
            arguments = {k.arg: _literal(k.value) for k in node.keywords}
        except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError):
            return None
        if len(arguments) != len(node.keywords):  # a repeated keyword (ast.parse allows it)
            return None
        calls.append({"name": name, "arguments": arguments})
    return calls


# ---------------------------------------------------------------- converters


def from_xlam(rows: Iterable) -> Converted:
    """xLAM rows: `query`, and `tools` / `answers` as JSON strings; one row = one single-turn example."""
    out = Converted([])
    for index, row in enumerate(tqdm(rows, desc="xlam", unit="row", disable=None)):
        out.rows += 1
        problem = _missing(row, ("query", "tools", "answers"))
        tools = answer = None
        if problem is None:
            tools = _decode_json_field(row["tools"], want=list)
            problem = TOOLS_NOT_JSON if tools is None else _tools_problem(tools)
        if problem is None:
            answer, problem = decode_calls(row["answers"])
        problem = problem or answer_problem(answer, tools)
        if problem:
            out.dropped[problem] += 1
            continue
        row_id = row.get("id", index)
        messages = [{"role": "user", "content": str(row["query"])}]
        out.records.append(make_record(f"xlam-{row_id}", "xlam", None, tools, messages, answer))
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
    listing = system[start:end].strip()
    if listing.endswith("."):  # the list is followed by a full stop
        listing = listing[:-1]
    return system[:start], _decode_json_field(listing, want=list)


def _dialogue_examples(out: Converted, source: str, row_index: int, system: str | None, tools: list,
                       turns: list, parse_call: Callable[[str, str], tuple[list | None, str | None]]) -> None:
    """One example per assistant call turn, its context all earlier turns; counts what it cannot use.

    `parse_call(value, from_)` gives (calls, None) for a call turn, (None, reason) for a broken call turn (dropped,
    kept as text in later contexts), or (None, None) for plain text.
    """
    messages, made_any_call = [], False
    for turn_index, turn in enumerate(turns):
        role = ROLE_ALIASES[turn["from"]]
        value = str(turn["value"])
        if role != "assistant":
            messages.append({"role": role, "content": value})
            continue
        calls, problem = parse_call(value, turn["from"])
        if calls is None:
            if problem:
                out.dropped[problem] += 1
                made_any_call = True
            messages.append({"role": "assistant", "content": value})
            continue
        made_any_call = True
        problem = EMPTY_CONTEXT if not messages else answer_problem(calls, tools)
        if problem:
            out.dropped[problem] += 1
        else:
            record_id = f"{source}-{row_index}@{turn_index}"
            out.records.append(make_record(record_id, source, system, tools, list(messages), calls))
        messages.append({"role": "assistant", "content": "", "tool_calls": calls})
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
        problem = _missing(row, ("system", "conversations")) or _turns_problem(row["conversations"])
        cut = None
        if problem is None:
            cut = toolace_tools(str(row["system"]))
            problem = TOOLS_NOT_IN_SYSTEM if cut is None else (TOOLS_NOT_JSON if cut[1] is None else None)
        problem = problem or _tools_problem(cut[1])
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
        problem = _missing(row, ("conversations", "tools")) or _turns_problem(row["conversations"])
        tools = None
        if problem is None:
            tools = _decode_json_field(row["tools"], want=list)
            problem = TOOLS_NOT_JSON if tools is None else _tools_problem(tools)
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
        spec = _decode_json_field(line, want=dict)
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
            calls = normalize_calls(_decode_json_field(_decode_json_field(content, want=str), want=(list, dict)))
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
        problem = _missing(row, ("prompt", "reward_model"))
        prompt = row["prompt"] if problem is None else None
        if problem is None and (not isinstance(prompt, list) or not prompt or not isinstance(prompt[0], dict)
                                or prompt[0].get("role") != "system"):
            problem = f"{MISSING_FIELD}:prompt[0].system"
        parts = messages = answer = None
        if problem is None:
            parts = _tools_from_system_text(str(prompt[0].get("content")))
            problem = TOOLS_NOT_IN_SYSTEM if parts is None else _tools_problem(parts[1])
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


def convert(kind: str, location: str, *, hub_loader: Callable[[str, str], list] = _load_from_hub) -> Converted:
    """Read `location` (file, directory or hub id) and convert it with the `kind` converter."""
    if kind not in CONVERTERS:
        raise DataError(f"unknown source kind {kind!r}; expected one of {SOURCES}")
    return CONVERTERS[kind](read_rows(location, hub_loader=hub_loader))


# ---------------------------------------------------------------- prepared parquet (train.parquet / test.parquet)

_JSON_COLUMNS = ("tools", "messages", "answer")


def write_prepared(records: list[dict], path: str | Path, split: str) -> None:
    """Write records as parquet: the unified columns (JSON text for nested ones) plus Tool-N1's verl columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {
        "id": [r["id"] for r in records],
        "source": [r["source"] for r in records],
        "system": [r.get("system") for r in records],
        **{key: [json.dumps(r[key], ensure_ascii=False) for r in records] for key in _JSON_COLUMNS},
        "multi_turn": [bool(r.get("multi_turn")) for r in records],
        "tool_block": [r.get("tool_block") for r in records],
        "data_source": ["toolcall"] * len(records),
        "prompt": [prompts.chat_messages(r) for r in records],
        "ability": ["toolcall"] * len(records),
        "reward_model": [{"style": "rule", "ground_truth": json.dumps(r["answer"])} for r in records],
        "extra_info": [{"split": split, "index": i, "prompt_type": "qwen"} for i in range(len(records))],
    }
    schema = [
        ("id", pa.string()), ("source", pa.string()), ("system", pa.string()),
        ("tools", pa.string()), ("messages", pa.string()), ("answer", pa.string()), ("multi_turn", pa.bool_()),
        ("tool_block", pa.string()), ("data_source", pa.string()),
        ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
        ("extra_info", pa.struct([("split", pa.string()), ("index", pa.int64()), ("prompt_type", pa.string())])),
    ]
    if records and all("prompt_ids" in r for r in records):
        columns["prompt_ids"] = [r["prompt_ids"] for r in records]
        schema.append(("prompt_ids", pa.list_(pa.int32())))
    table = pa.table(columns, schema=pa.schema(schema))
    pq.write_table(table, str(path))


def read_prepared(path: str | Path) -> list[dict]:
    """Records back from a `write_prepared` parquet file (`prompt_ids` included when present)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file (expected a train.parquet / test.parquet from prepare-data)")
    records = []
    for lineno, row in enumerate(_read_parquet(path)):
        missing = [k for k in ("id", "source", "system", *_JSON_COLUMNS) if k not in row]
        if missing:
            raise DataError(f"{path}: row {lineno}: missing column(s) {missing}; not a prepared file")
        record = {"id": row["id"], "source": row["source"], "system": row["system"],
                  **{key: json.loads(row[key]) for key in _JSON_COLUMNS},
                  "multi_turn": bool(row.get("multi_turn"))}
        if row.get("tool_block") is not None:
            record["tool_block"] = row["tool_block"]
        if row.get("prompt_ids") is not None:
            record["prompt_ids"] = list(row["prompt_ids"])
        records.append(record)
    return records
