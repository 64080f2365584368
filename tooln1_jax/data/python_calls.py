"""ToolACE's Python-syntax calls, `[name(key=value, ...), ...]`, parsed into call dicts without evaluating code."""

from __future__ import annotations

import ast
import json
import re


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
