"""What the three benchmark checkers share: the verdict type and the string standardisation.

Pure Python (no jax): the checkers are usable from any framework.
"""

from __future__ import annotations

import functools
import re
import sys
from dataclasses import dataclass
from typing import Any

_IGNORED_CHARS = re.compile(r"[ ,./\-_*^]")
MAX_FLOAT_INT = int(sys.float_info.max)  # a larger int cannot become a float (OverflowError)


@dataclass(frozen=True)
class Verdict:
    """A checker's answer for one example: `valid` and, when not, why (empty when valid)."""

    valid: bool
    reason: str = ""


OK = Verdict(True)


def fail(reason: str) -> Verdict:
    return Verdict(False, reason)


def never_raises_on_depth(check):
    """A checker that returns an invalid verdict, instead of raising, on values nested past Python's recursion
    limit (json.loads decodes up to ~1000 levels; walking, comparing or printing them recurses once more)."""

    @functools.wraps(check)
    def guarded(*args, **kwargs) -> Verdict:
        try:
            return check(*args, **kwargs)
        except RecursionError:
            return fail("a value is nested too deeply to check (Python's recursion limit)")

    return guarded


def standardize_string(text: str) -> str:
    """BFCL's string normal form: drop spaces and `,./-_*^`, lower-case, single quotes -> double quotes.

    So "April 1, 2024" == "april 1 2024" == "April-1-2024"; used by BFCL, ACEBench and API-Bank scoring.
    """
    return _IGNORED_CHARS.sub("", text).lower().replace("'", '"')


def calls_from_records(calls: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Decoded reply calls `[{"name", "arguments"}]` -> the benchmarks' `[{name: arguments}]` form.

    None stays None (no decodable call). An item without a string name or with non-object arguments
    cannot be written in the benchmarks' form; it is kept as `{"<malformed>": repr(item)}` (a non-object value) so
    the checkers reject the reply as malformed rather than silently dropping the item.
    """
    if calls is None:
        return None
    out: list[dict[str, Any]] = []
    for item in calls:
        if (isinstance(item, dict) and isinstance(item.get("name"), str)
                and isinstance(item.get("arguments"), dict)):
            out.append({item["name"]: item["arguments"]})
        else:
            out.append({"<malformed>": repr(item)})
    return out


def is_call_list(calls: Any) -> bool:
    """True for `[{name: {arg: value}}, ...]` (one key per item, arguments an object); `[]` included."""
    if not isinstance(calls, list):
        return False
    return all(isinstance(c, dict) and len(c) == 1 and isinstance(next(iter(c.values())), dict) for c in calls)
