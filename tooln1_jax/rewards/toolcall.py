"""Tool-call rewards with Tool-N1 semantics (docs/FORMATS.md §4).

A reply is `<think> ... </think>` followed by `<tool_call>[{"name": ..., "arguments": {...}}, ...]</tool_call>`.
`score` never raises on any reply or answer: anything it cannot read counts as "no call" or "invalid structure".

Variants (the reference's compute_score_v0 / v2 / v3 / v4):
- `binary`          1.0 iff a decodable block, both think tags, valid items, and an exact multiset match; else 0.0.
- `binary_no_think` the same without the think-tag condition.
- `think_partial`   0.2 if both think tags occur anywhere, plus 0.8 for an exact match.
- `name_partial`    as think_partial, but a reply whose call names match as a multiset (without an exact match)
                    gets 0.2 instead of 0.8.
An exact match compares the multisets of `(name, json.dumps(arguments, sort_keys=True))`: call order and key order
are free, types are not (5, 5.0 and "5" all differ).

Which block counts (`BLOCK`, one rule for training and evaluation): the LAST `<tool_call>...</tool_call>` block of
the reply. The release's training reward reads the last block (every `extract_solution_*` of its
`verl/utils/reward_score/toolcall.py`), so that is the block GRPO taught the model to get right; the format asks for
one block a reply, so the rule only decides replies that break it. The reward, the evaluation parser and the
release-handler decoding of BFCL (`eval/bfcl_handler_decode.py`) all take the block from `tool_call_block` (the
reward from the text after the reply's last `<|im_start|>assistant`, as the release's reward; the handler decoding
from the whole reply, as the release's handler). The release's BFCL handler read the first block: `block="first"`
reproduces it.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

VARIANTS = ("binary", "binary_no_think", "think_partial", "name_partial")

# Parse statuses of a reply.
OK = "ok"
NO_BLOCK = "no_block"  # no <tool_call>...</tool_call> block
BAD_JSON = "bad_json"  # the block (or its double-encoded string) does not decode
BAD_STRUCTURE = "bad_structure"  # decodes, but is not a list of {"name", "arguments"} objects

BLOCK = "last"  # which <tool_call> block of a reply counts, in training and in evaluation (module docstring)
BLOCKS = ("first", "last")

_ASSISTANT_MARKER = "<|im_start|>assistant"
_OPEN, _CLOSE = "<tool_call>", "</tool_call>"
_DECODE_ERRORS = (ValueError, RecursionError)  # json.JSONDecodeError is a ValueError


@dataclass(frozen=True)
class ParsedReply:
    """What a reply says: its think text, its decoded calls, and whether it could be read."""

    text: str  # the reply text that was parsed (after the last "<|im_start|>assistant", when present)
    has_think: bool  # both "<think>" and "</think>" occur somewhere in `text`
    think: str | None  # text between the first "<think>" and the next "</think>", if any
    calls: list | None  # decoded calls when status is "ok" (possibly []), else None
    status: str  # OK | NO_BLOCK | BAD_JSON | BAD_STRUCTURE
    decoded: Any = None  # the decoded block value (after string double-decoding), for diagnostics


def reply_text(reply: str) -> str:
    """The assistant part of a reply: from the last "<|im_start|>assistant" marker on, or all of it."""
    index = reply.rfind(_ASSISTANT_MARKER)
    return reply[index:] if index != -1 else reply


def _between(text: str, open_tag: str, close_tag: str, start: int = 0) -> tuple[str, int] | None:
    """(content, end) of the first `open_tag ... close_tag` at or after `start` (the shortest), else None.

    The regex `open(.*?)close` semantics in one pass: when the first opening tag has no close after it, no later
    one has either (the regex would rescan the rest of the text from each of them: quadratic on tag floods).
    """
    i = text.find(open_tag, start)
    if i == -1:
        return None
    j = text.find(close_tag, i + len(open_tag))
    return None if j == -1 else (text[i + len(open_tag):j], j + len(close_tag))


def _blocks(text: str) -> list[str]:
    """The contents of every `<tool_call>...</tool_call>` block, as `re.findall` of the lazy pattern reads them."""
    out, start = [], 0
    while (found := _between(text, _OPEN, _CLOSE, start)) is not None:
        content, start = found
        out.append(content)
    return out


def tool_call_block(text: str, block: str = BLOCK) -> str | None:
    """The content of the `<tool_call>` block that counts ("last" by the rule; "first" on request), or None when
    the text has no complete block."""
    if block not in BLOCKS:
        raise ValueError(f"block must be 'first' or 'last', got {block!r}")
    if block == "first":
        found = _between(text, _OPEN, _CLOSE)
        return found[0] if found else None
    blocks = _blocks(text)
    return blocks[-1] if blocks else None


def _decode_block(content: str) -> tuple[str, Any]:
    """(status, value) of one block's content: JSON, a string decoded once more, a dict made a list."""
    try:
        value = json.loads(content.strip())
        if isinstance(value, str):
            value = json.loads(value)
    except _DECODE_ERRORS:
        return BAD_JSON, None
    if isinstance(value, dict):
        value = [value]
    return OK, value


def _is_call_list(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(item, dict) and "name" in item and "arguments" in item for item in value
    )


def parse_reply(reply: str, block: str = BLOCK) -> ParsedReply:
    """Read the think text and the calls of the `<tool_call>` block that counts (`tool_call_block`) in the reply's
    assistant part (`reply_text`), as the release's training reward reads them."""
    text = reply_text(reply) if isinstance(reply, str) else ""
    has_think = "<think>" in text and "</think>" in text
    think_match = _between(text, "<think>", "</think>")
    think = think_match[0] if think_match else None

    content = tool_call_block(text, block)
    if content is None:
        return ParsedReply(text, has_think, think, None, NO_BLOCK)
    status, value = _decode_block(content)
    if status != OK:
        return ParsedReply(text, has_think, think, None, status)
    if not _is_call_list(value):
        return ParsedReply(text, has_think, think, None, BAD_STRUCTURE, value)
    return ParsedReply(text, has_think, think, value, OK, value)


def _answer_calls(answer: Any) -> list | None:
    """The ground-truth calls: a list, or a JSON string of one (decoded up to twice); None when unusable (a lone
    object too: the release's reward compares it key by key and never matches)."""
    try:
        for _ in range(2):
            if isinstance(answer, str):
                answer = json.loads(answer)
    except _DECODE_ERRORS:
        return None
    return answer if _is_call_list(answer) else None


def _full_keys(calls: list) -> Counter:
    """Multiset of (name, canonical arguments); raises TypeError/ValueError when an item cannot be compared."""
    return Counter((item["name"], json.dumps(item["arguments"], sort_keys=True)) for item in calls)


def match_level(calls: list, answer: list) -> int:
    """2 = exact multiset match, 1 = only the names match as a multiset, 0 = neither or not comparable.

    Two empty lists match exactly; an empty list never matches a non-empty one (not even by name).
    """
    if not calls or not answer:
        return 2 if len(calls) == len(answer) else 0
    try:
        if _full_keys(calls) == _full_keys(answer):
            return 2
        if Counter(item["name"] for item in calls) == Counter(item["name"] for item in answer):
            return 1
    except (TypeError, ValueError, RecursionError):  # unhashable name, unserialisable arguments
        return 0
    return 0


def score_details(reply: str, answer: list | str, variant: str = "binary") -> tuple[float, bool, bool]:
    """(reward, exact match of the calls, well-formed: think tags + a decodable call block) of one reply, from one
    parse of it."""
    _check_variant(variant)
    parsed, truth = parse_reply(reply), _answer_calls(answer)
    exact = parsed.calls is not None and truth is not None and match_level(parsed.calls, truth) == 2
    return _score_parsed(parsed, truth, variant), exact, parsed.status == OK and parsed.has_think


def score(reply: str, answer: list | str, variant: str = "binary") -> float:
    """Reward of one reply against the ground-truth calls (a list, or its JSON string). Never raises on the inputs.

    Raises ValueError only for an unknown `variant` (a programming error, not a data one).
    """
    _check_variant(variant)
    return _score_parsed(parse_reply(reply), _answer_calls(answer), variant)


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"unknown reward variant {variant!r}; expected one of {VARIANTS}")


def _score_parsed(parsed: ParsedReply, truth: list | None, variant: str) -> float:
    level = match_level(parsed.calls, truth) if parsed.calls is not None and truth is not None else 0
    if variant == "binary":
        return 1.0 if parsed.has_think and level == 2 else 0.0
    if variant == "binary_no_think":
        return 1.0 if level == 2 else 0.0
    think_credit = 0.2 if parsed.has_think else 0.0
    if level == 2:
        return think_credit + 0.8
    if level == 1 and variant == "name_partial":
        return think_credit + 0.2
    return think_credit
