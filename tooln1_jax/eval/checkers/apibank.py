"""API-Bank level-1 ("Call" mode) checker.

The ground truth of one example is the dialogue's next API turn, `{"api_name": str, "param_dict": {name: str}}`;
API-Bank writes every parameter value as a string, also for parameters its API descriptions declare as int,
bool or list (e.g. "2", "True", "['John', 'Jane']"). Calls are `[{name: {arg: value}}]` (None: no decodable call).

Rules (docs/FORMATS.md §5): the reply's first call is scored, as the official evaluator reads the first API
request of the reply. It is correct when it names the expected API, has exactly the expected parameter names, and
every value equals the expected one: strings after BFCL's standardisation, numbers and booleans exactly, lists
element by element, objects key by key. A parameter declared int / bool / list is compared as the Python literal
its string spells (so 2 and "2" both match "2"; True and "True" match "True"). `exact=True` is the strict exact
match: the same, with strings compared character for character.
"""

from __future__ import annotations

import ast
from typing import Any

from tooln1_jax.eval.checkers.common import (OK, Verdict, fail, is_call_list, never_raises_on_depth,
                                              standardize_string)

CATEGORIES = ("level-1",)
_LITERAL_TYPES = ("int", "float", "bool", "list", "list(str)", "dict")


@never_raises_on_depth
def check(functions: list[dict], calls: list[dict] | None, ground_truth: dict, *, exact: bool = False) -> Verdict:
    """Score one reply. `functions`: the offered APIs as `{"name", "description", "parameters": {param: {"type",
    "description"}}}` (API-Bank's `input_parameters`), which give the declared parameter types."""
    if calls is None:
        return fail("no decodable call")
    if not is_call_list(calls):
        return fail("calls are not in the [{name: {arg: value}}] form")
    if not calls:
        return fail("no call")
    (name, args), = calls[0].items()
    expected_name = ground_truth["api_name"]
    if name != expected_name:
        return fail(f"wrong API: expected {expected_name!r}, got {name!r}")
    expected = ground_truth["param_dict"]
    if set(args) != set(expected):
        missing, extra = sorted(set(expected) - set(args)), sorted(set(args) - set(expected))
        return fail(f"{name}: parameters differ (missing {missing}, unexpected {extra})")
    function = next((f for f in functions if f.get("name") == name), {})
    declared = function.get("parameters", {})
    for param, want in expected.items():
        type_name = declared.get(param, {}).get("type", "str")  # a parameter the API does not declare: str
        want, got = _typed(want, type_name), _typed(args[param], type_name)
        if not values_equal(got, want, exact=exact):
            return fail(f"{name}.{param}: {args[param]!r} differs from {expected[param]!r}")
    return OK


def _typed(value: Any, type_name: str) -> Any:
    """The Python literal a string spells, for parameters declared with a non-string type."""
    if type_name in _LITERAL_TYPES and isinstance(value, str):
        try:
            return ast.literal_eval(value.strip())
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):  # TypeError: "{[1]: 2}"
            return value
    return value


def values_equal(got: Any, want: Any, *, exact: bool = False) -> bool:
    """Strings standardised (unless `exact`), numbers and booleans exactly (True is not 1), containers recursively."""
    if isinstance(want, str) or isinstance(got, str):
        if not (isinstance(want, str) and isinstance(got, str)):
            return False
        return got == want if exact else standardize_string(got) == standardize_string(want)
    if isinstance(want, bool) or isinstance(got, bool):
        return type(got) is type(want) and got == want
    if isinstance(want, (list, tuple)):
        return (isinstance(got, (list, tuple)) and len(got) == len(want)
                and all(values_equal(g, w, exact=exact) for g, w in zip(got, want)))
    if isinstance(want, dict):
        return (isinstance(got, dict) and set(got) == set(want)
                and all(values_equal(got[k], want[k], exact=exact) for k in want))
    if isinstance(want, (int, float)) or isinstance(got, (int, float)):
        return type(got) in (int, float) and type(want) in (int, float) and got == want
    return got == want
