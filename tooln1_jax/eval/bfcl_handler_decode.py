"""BFCL replies decoded as the Tool-N1 release's BFCL handler decodes them, for `tooln1 eval bfcl --prompt
tooln1-bfcl` (the release's prompt, `bfcl_handler_prompt.py`, and its reading of the replies).

The handler (`eval/bfcl_handler.py`, `QwenReasonHandler`) JSON-decodes a `<tool_call>` block, and its `decode_ast`
turns each item into BFCL's `{name: arguments}`; BFCL counts any exception there as "Failed to decode AST". That
reading differs from the training reward's (`rewards/toolcall.py`):
- a single `{"name", "arguments"}` object, or a JSON string holding the calls, does not decode (the reward wraps
  the object in a list and decodes the string once more);
- `arguments` of any JSON type decodes (BFCL's checkers then find the calls malformed);
- an empty object `{}` or an empty string `""` decodes to no calls (iterating them yields nothing);
- the whole reply is read: nothing is cut at a later `<|im_start|>assistant`.
The block read is the one that counts by the project's rule (`toolcall.BLOCK`: the last); the handler itself read
the first, which `block="first"` reproduces. tests/test_bfcl_handler_decode.py compares this module with the
handler's outputs, recorded on constructed replies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tooln1_jax.rewards import toolcall


@dataclass(frozen=True)
class HandlerDecode:
    """A reply as the handler reads it."""

    value: Any  # the block's JSON value; None when there is no block or it is not JSON
    calls: list[dict] | None  # `decode_ast`'s output `[{name: arguments}]`; None where it fails
    status: str  # toolcall.OK | NO_BLOCK | BAD_JSON | BAD_STRUCTURE (decode_ast fails)


def decode(reply: str, block: str = toolcall.BLOCK) -> HandlerDecode:
    """The handler's reading of one reply: the block's content stripped and JSON-decoded, then `decode_ast`."""
    content = toolcall.tool_call_block(reply, block)
    if content is None:
        return HandlerDecode(None, None, toolcall.NO_BLOCK)
    try:
        value = json.loads(content.strip())
    except (ValueError, RecursionError):  # the handler's inference fails on both; BFCL then has no calls
        return HandlerDecode(None, None, toolcall.BAD_JSON)
    calls = decode_ast(value)
    return HandlerDecode(value, calls, toolcall.OK if calls is not None else toolcall.BAD_STRUCTURE)


def decode_ast(value: Any) -> list[dict] | None:
    """`[{item["name"]: item["arguments"]} for item in value]` as the handler computes it; None where that raises.

    Iterating an object yields its keys and a string its characters, and a string has no "name": a non-empty
    object or string fails, an empty one is an empty list of calls.
    """
    if isinstance(value, (dict, str)):
        return None if value else []
    if not isinstance(value, list):
        return None  # null, a number, a boolean: not iterable
    calls = []
    for item in value:
        if not isinstance(item, dict) or "name" not in item or "arguments" not in item:
            return None
        if isinstance(item["name"], (list, dict)):
            return None  # unhashable: cannot be a dict key
        calls.append({item["name"]: item["arguments"]})
    return calls
