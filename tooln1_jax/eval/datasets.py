"""The evaluation benchmarks as examples: BFCL v3 (AST categories), ACEBench normal, API-Bank level-1.

Data ships with the package (`tooln1_jax/assets/benchmarks/`, see its README for sources and licences). Every
example carries what its checker needs (the offered functions and the ground truth in the benchmark's own form) and
converts into the project's unified record (docs/FORMATS.md §2), from which `tooln1_jax.data.prompts` builds the
prompt. Pure Python (no jax). Unreadable files raise `BenchmarkDataError` naming the file and line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tooln1_jax import assets
from tooln1_jax.eval.checkers import acebench as acebench_checker
from tooln1_jax.eval.checkers import apibank as apibank_checker
from tooln1_jax.eval.checkers import bfcl as bfcl_checker

BENCHMARKS = ("bfcl", "acebench", "apibank")
CATEGORIES = {"bfcl": bfcl_checker.CATEGORIES, "acebench": acebench_checker.CATEGORIES,
              "apibank": apibank_checker.CATEGORIES}
_SPEAKER = re.compile(r"^(user|system):\s?(.*)$")


class BenchmarkDataError(ValueError):
    """A benchmark file that cannot be read as documented."""


@dataclass(frozen=True)
class Example:
    """One benchmark question.

    `tools` are the functions offered, as the benchmark writes them (the checker reads them too); `messages` the
    chat history before the reply (roles user / assistant / tool, earlier calls in `tool_calls`); `context` the
    benchmark's own system text, if any (BFCL system turns, ACEBench's current time or user profile).
    """

    benchmark: str
    category: str
    id: str
    tools: list[dict]
    messages: list[dict]
    ground_truth: Any
    context: str | None = None

    def record(self) -> dict:
        """The unified record; the system preamble is Tool-N1's, after the benchmark's context when there is one."""
        from tooln1_jax.data import prompts

        system = f"{self.context}\n\n{prompts.DEFAULT_PREAMBLE}" if self.context else None
        return {"id": self.id, "source": self.benchmark, "system": system, "tools": self.tools,
                "messages": self.messages, "answer": reference_answer(self)}


def categories_of(benchmark: str) -> tuple[str, ...]:
    if benchmark not in CATEGORIES:
        raise ValueError(f"unknown benchmark {benchmark!r}; known: {', '.join(BENCHMARKS)}")
    return CATEGORIES[benchmark]


def load(benchmark: str, categories: list[str] | None = None, limit: int | None = None) -> list[Example]:
    """Examples of `benchmark` (all categories unless some are named), at most `limit` (>= 1) per category."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be an integer >= 1 (or None: all), got {limit!r}")
    known = categories_of(benchmark)
    wanted = list(known) if not categories else list(categories)
    unknown = [c for c in wanted if c not in known]
    if unknown:
        raise ValueError(f"unknown {benchmark} categories {unknown}; known: {', '.join(known)}")
    loader = {"bfcl": _load_bfcl, "acebench": _load_acebench, "apibank": _load_apibank}[benchmark]
    return [example for category in wanted for example in loader(category)[:limit]]  # [:None]: all


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise BenchmarkDataError(f"{path}:{number}: not JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise BenchmarkDataError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def _ground_truth_by_id(path: Path) -> dict[str, Any]:
    truth = {}
    for row in read_jsonl(path):
        if "id" not in row or "ground_truth" not in row:
            raise BenchmarkDataError(f"{path}: a row lacks 'id' or 'ground_truth': {str(row)[:120]}")
        truth[row["id"]] = row["ground_truth"]
    return truth


def _field(row: dict, key: str, path: Path) -> Any:
    if key not in row:
        raise BenchmarkDataError(f"{path}: example {row.get('id', '?')!r} has no {key!r}")
    return row[key]


# ------------------------------------------------------------------------------------------------ BFCL

def _load_bfcl(category: str) -> list[Example]:
    root = assets.path("benchmarks", "bfcl_v3")
    path = root / f"BFCL_v3_{category}.json"
    answers = root / "possible_answer" / path.name
    truth = None if category in bfcl_checker.RELEVANCE_CATEGORIES else _ground_truth_by_id(answers)
    examples = []
    for row in read_jsonl(path):
        example_id = _field(row, "id", path)
        context, messages = [], []
        for turn in _field(row, "question", path):
            for message in turn:
                if message.get("role") == "system":
                    context.append(message["content"])
                elif message.get("role") in ("user", "assistant"):
                    messages.append({"role": message["role"], "content": message["content"]})
                else:
                    raise BenchmarkDataError(f"{path}: example {example_id!r} has a message with role "
                                             f"{message.get('role')!r}")
        if truth is not None and example_id not in truth:
            raise BenchmarkDataError(f"{path}: example {example_id!r} has no ground truth in possible_answer/")
        examples.append(Example("bfcl", category, example_id, _field(row, "function", path), messages,
                                truth[example_id] if truth is not None else None,
                                "\n\n".join(context) or None))
    return examples


def _first_accepted(accepted: list, required: bool) -> Any:
    """BFCL: the first accepted value (nested answers resolved), or _OMIT for an optional argument."""
    if "" in accepted and not required:
        return _OMIT
    values = [v for v in accepted if v != ""]
    return _resolve(values[0]) if values else _OMIT


def _resolve(value: Any) -> Any:
    if isinstance(value, dict):
        out = {k: _first_accepted(v, False) if isinstance(v, list) else v for k, v in value.items()}
        return {k: v for k, v in out.items() if v is not _OMIT}
    if isinstance(value, list) and value and all(isinstance(x, dict) for x in value):
        return [_resolve(x) for x in value]
    return value


_OMIT = object()


def reference_answer(example: Example) -> list[dict] | None:
    """One correct reply's calls as `[{"name", "arguments"}]`: BFCL's first accepted values (optional arguments
    left out unless the schema requires them), ACEBench's first alternative, API-Bank's call. Irrelevance
    categories: []; live_relevance has no ground truth: None."""
    truth = example.ground_truth
    if example.benchmark == "apibank":
        return [{"name": truth["api_name"], "arguments": dict(truth["param_dict"])}]
    if example.benchmark == "acebench":
        answer = truth[0] if isinstance(truth, list) else truth
        return [{"name": acebench_checker.base_name(key), "arguments": args} for key, args in answer.items()]
    if example.category in ("irrelevance", "live_irrelevance"):
        return []
    if truth is None:
        return None
    calls = []
    for expected in truth:
        (name, args), = expected.items()
        function = next((f for f in example.tools if f.get("name") == name), {})
        required = function.get("parameters", {}).get("required", [])
        values = {p: _first_accepted(accepted, p in required) for p, accepted in args.items()}
        calls.append({"name": name, "arguments": {p: v for p, v in values.items() if v is not _OMIT}})
    return calls


# ------------------------------------------------------------------------------------------------ ACEBench

def _load_acebench(category: str) -> list[Example]:
    root = assets.path("benchmarks", "acebench")
    path = root / f"data_normal_{category}.json"
    truth = _ground_truth_by_id(root / "possible_answer" / path.name)
    examples = []
    for row in read_jsonl(path):
        example_id = _field(row, "id", path)
        if example_id not in truth:
            raise BenchmarkDataError(f"{path}: example {example_id!r} has no ground truth in possible_answer/")
        context = []
        if row.get("time"):
            context.append(f"Current time: {row['time']}")
        if row.get("profile"):
            profile = row["profile"] if isinstance(row["profile"], str) else json.dumps(row["profile"])
            context.append(f"User profile: {profile}")
        messages = transcript_messages(_field(row, "question", path))
        examples.append(Example("acebench", category, example_id, _field(row, "function", path), messages,
                                truth[example_id], "\n".join(context) or None))
    return examples


def transcript_messages(question: str) -> list[dict]:
    """ACEBench's "user: ... / system: ..." transcript as chat messages (its "system" speaker is the assistant).

    A line without a speaker label continues the previous turn; text before any label is a user turn.
    """
    messages: list[dict] = []
    for line in question.strip("\n").split("\n"):
        match = _SPEAKER.match(line)
        if match:
            role = "user" if match.group(1) == "user" else "assistant"
            messages.append({"role": role, "content": match.group(2)})
        elif messages:
            messages[-1]["content"] += "\n" + line
        else:
            messages.append({"role": "user", "content": line})
    for m in messages:
        m["content"] = m["content"].strip()
    return messages


# ------------------------------------------------------------------------------------------------ API-Bank

def _load_apibank(category: str) -> list[Example]:
    root = assets.path("benchmarks", "api_bank")
    with open(root / "apis.json", encoding="utf-8") as f:
        apis = json.load(f)
    examples = []
    for path in sorted((root / "level-1-given-desc").glob("*.jsonl")):
        turns = read_jsonl(path)
        for number, turn in enumerate(turns, 1):
            if turn.get("role") not in ("User", "AI", "API"):
                raise BenchmarkDataError(f"{path}:{number}: role must be User, AI or API, got {turn.get('role')!r}")
            if turn["role"] == "API" and turn.get("api_name") not in apis:
                raise BenchmarkDataError(f"{path}:{number}: API {turn.get('api_name')!r} is not in apis.json")
        # The APIs the dialogue calls plus those its file name lists (names apis.json does not know are skipped).
        named = path.name.split("-level-")[0].split("-")
        offered = sorted({t["api_name"] for t in turns if t["role"] == "API"} | {n for n in named if n in apis})
        tools = [{"name": n, "description": apis[n]["description"], "parameters": apis[n]["input_parameters"]}
                 for n in offered]
        for index, turn in enumerate(turns):
            if turn["role"] == "API":
                examples.append(Example("apibank", category, f"{path.stem}@{index}", tools,
                                        _apibank_history(turns[:index]),
                                        {"api_name": turn["api_name"], "param_dict": turn["param_dict"]}))
    return examples


def _apibank_history(turns: list[dict]) -> list[dict]:
    messages = []
    for turn in turns:
        if turn["role"] == "API":
            messages.append({"role": "assistant", "content": "",
                             "tool_calls": [{"name": turn["api_name"], "arguments": turn["param_dict"]}]})
            messages.append({"role": "tool", "content": json.dumps(turn["result"]["output"])})
        else:
            messages.append({"role": {"User": "user", "AI": "assistant"}[turn["role"]], "content": turn["text"]})
    return messages
