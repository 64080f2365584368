"""ACEBench "normal" checker, with the verdicts of the official one (ACEBench/ACEBench `model_eval/checker.py`, MIT).

Calls are `[{name: {arg: value}}]` (None: no decodable call); the ground truth is `{name: {arg: value}}` (several
calls as several keys, a repeated function with a `_N` suffix) or a LIST of such objects, any one of which may match.
The official rules are reproduced quirks included (tests/test_checker_acebench.py compares against a vendored copy):

- the official pipeline removes every whitespace character from the raw reply text before decoding it, so string
  values arrive without their spaces; `check` does the same to the decoded calls (`strip_whitespace=False` skips
  it). An expected string with spaces in a list inside an object (compared as `str()` of the list, without
  standardisation) can then never match: even a reply copied from the ground truth fails there, as upstream;
- call count and the multiset of names must match; each expected call needs some reply call of its name that
  passes (a reply call may serve several expected calls);
- the schema used for an expected call is the first offered function whose name is a SUBSTRING of the expected key;
- an argument must be in both the schema and the expected arguments; required ones must be present;
- types: "number" means int, an int passes for a float, "true"/"false" pass as booleans, and a value of the
  expected value's type passes whatever the schema says (and is then not compared at all);
- values: strings by containment after standardisation (expected inside the reply's), lists element-wise after
  standardisation, objects key by key with the key count equal and containment on `str()` of leaf values,
  arrays of objects item by item. Numbers and booleans are never compared by value.

Where the official checker would raise (it then aborts the run), this one returns an invalid verdict saying so.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from tooln1_jax.eval.checkers.common import (MAX_FLOAT_INT, OK, Verdict, fail, is_call_list, never_raises_on_depth,
                                              standardize_string)

CATEGORIES = ("atom_bool", "atom_enum", "atom_number", "atom_list", "atom_object_short", "atom_object_deep",
              "single_turn_single_function", "single_turn_parallel_function", "similar_api", "preference")
PAPER_SUBSET = CATEGORIES[:8]  # atom + single_turn: the subset the Tool-N1 paper reports

_PY_TYPES = {"string": str, "integer": int, "float": float, "boolean": bool, "array": list, "tuple": list,
             "dict": dict, "any": str, "list": list, "object": dict, "objectArray": list, "list(string)": list,
             "list(enum)": list, "int": int, "enum": enumerate, "number": int}
_NESTED_TYPES = ("array", "tuple", "list(string)", "list(enum)", "object", "objectArray")
_SUFFIX = re.compile(r"_\d+$")


class _Unscorable(Exception):
    """A reply or ground truth on which the official checker raises."""


@never_raises_on_depth
def check(functions: list[dict], calls: list[dict] | None, ground_truth: dict | list[dict],
          category: str = "", *, strip_whitespace: bool = True) -> Verdict:
    """Score one reply. `category` is accepted for symmetry with the other checkers (the normal categories share
    one rule set); `strip_whitespace=False` skips the official pipeline's whitespace removal."""
    if calls is None:
        return fail("no decodable call")
    if not is_call_list(calls):
        return fail("calls are not in the [{name: {arg: value}}] form")
    if strip_whitespace:
        calls = without_whitespace(calls)
    alternatives = ground_truth if isinstance(ground_truth, list) else [ground_truth]
    failures = []
    for answer in alternatives:
        try:
            verdict = _check_answer(functions, calls, answer)
        except _Unscorable as e:
            verdict = fail(f"unscorable (the official checker raises here): {e}")
        if verdict.valid:
            return OK
        failures.append(verdict)
    return failures[0] if failures else fail("empty ground truth")


def base_name(key: str) -> str:
    """A ground-truth key without the `_N` suffix that marks a repeated function (upstream strips any `_<digits>`)."""
    return _SUFFIX.sub("", key)


def without_whitespace(value: Any) -> Any:
    """Strings (keys included) as the official `"".join(raw.split())` on the reply text leaves them.

    Only whitespace that stands literally in the text goes: spaces and other printable whitespace. Control
    characters (newline, tab, ...) can only appear escaped inside a JSON (or Python) string, so they survive.
    """
    if isinstance(value, str):
        return "".join(ch for ch in value if not (ch.isspace() and ch >= " "))
    if isinstance(value, list):
        return [without_whitespace(v) for v in value]
    if isinstance(value, dict):
        return {without_whitespace(k): without_whitespace(v) for k, v in value.items()}
    return value


def _check_answer(functions: list[dict], calls: list[dict], answer: dict) -> Verdict:
    if len(calls) != len(answer):
        return fail(f"wrong number of calls: expected {len(answer)}, got {len(calls)}")
    expected = [(key, base_name(key), args) for key, args in answer.items()]
    got_names = Counter(name for call in calls for name in call)
    want_names = Counter(name for _, name, _ in expected)
    if got_names != want_names:
        return fail(f"function names differ: expected {dict(want_names)}, got {dict(got_names)}")
    for key, name, args in expected:
        schema = next((f for f in functions if f["name"] in key), None)
        reasons = []
        for call in calls:
            if next(iter(call)) != name:
                continue
            verdict = _check_call(schema, call, args)
            if verdict.valid:
                break
            reasons.append(verdict.reason)
        else:
            return fail(reasons[-1] if reasons else f"no call to {name}")
    return OK


def _check_call(schema: dict | None, call: dict, expected: dict) -> Verdict:
    if schema is None:
        raise _Unscorable("no offered function matches the expected name")
    if "parameters" not in schema:
        raise _Unscorable(f"function {schema['name']!r} has no 'parameters'")
    args = next(iter(call.values()))
    params = schema["parameters"]
    if args == {} and params == {}:
        return OK
    if args == {} or params == {}:
        return fail(f"{schema['name']}: arguments missing or not expected")
    if not isinstance(params, dict) or "properties" not in params:
        raise _Unscorable(f"function {schema['name']!r} has no 'properties'")
    properties = params["properties"]
    if expected == properties:  # upstream shortcut: an expected-arguments object equal to the schema passes
        return OK
    if expected == {}:
        return fail(f"{schema['name']}: no arguments expected")
    name = schema["name"]
    if name not in call:
        return fail(f"wrong function: expected {name!r}, got {next(iter(call))!r}")
    if "required" not in params:
        raise _Unscorable(f"function {name!r} has no 'required' list")
    for param in params["required"]:
        if param not in args:
            return fail(f"{name}: missing required argument {param!r}")
    for param, value in args.items():
        if param not in properties or param not in expected:
            return fail(f"{name}: unexpected argument {param!r}")
        verdict = _check_value(f"{name}.{param}", value, properties[param], expected[param])
        if not verdict.valid:
            return verdict
    return OK


def _py_type(type_name: Any) -> type:
    if not isinstance(type_name, str) or type_name not in _PY_TYPES:
        raise _Unscorable(f"unknown schema type {type_name!r}")
    return _PY_TYPES[type_name]


def _check_value(where: str, value: Any, schema: Any, expected: Any) -> Verdict:
    if not isinstance(schema, dict):
        raise _Unscorable(f"{where}: schema {schema!r} is not an object")
    type_name = schema.get("type")
    py_type = _py_type(type_name)
    item_type = None
    if type_name in _NESTED_TYPES:
        items = schema.get("items")
        if isinstance(items, dict) and "type" in items:
            item_type = _py_type(items["type"])
        else:
            item_type = str if "string" in type_name else enumerate if "enum" in type_name else dict
    if type_name == "float" and type(value) is int:
        if abs(value) > MAX_FLOAT_INT:  # upstream's float() raises OverflowError here
            raise _Unscorable(f"{where}: integer too large for a float")
        value = float(value)

    verdict, is_variable = _check_type(where, value, expected, py_type, item_type)
    if not verdict.valid or is_variable:
        return verdict
    if py_type is dict:
        return _check_dict(where, value, expected)
    if py_type is list and item_type is dict:
        if type_name == "objectArray":
            if len(value) != _len(where, expected):
                return fail(f"{where}: expected {len(expected)} items, got {len(value)}")
            if value:
                raise _Unscorable(f"{where}: 'objectArray' items (upstream calls dict_checker wrongly there)")
        return _check_list_of_dicts(where, value, expected)
    if py_type is str:
        if not isinstance(expected, str):
            raise _Unscorable(f"{where}: expected value {expected!r} is not a string")
        if standardize_string(expected) not in standardize_string(value):
            return fail(f"{where}: {value!r} does not contain {expected!r} (after standardisation)")
        return OK
    if py_type is list:
        return _check_list(where, value, expected)
    return OK  # numbers and booleans: type only, as upstream


def _as_bool(value: Any) -> Any:
    return True if value == "true" else False if value == "false" else value


def _check_type(where: str, value: Any, expected: Any, py_type: type,
                item_type: type | None) -> tuple[Verdict, bool]:
    """(verdict, is_variable); `expected` is the expected value itself (not a list of accepted ones)."""
    expected_type = None if expected == "" else type(expected)
    is_variable = expected_type is not None and expected_type is not py_type
    value = _as_bool(value)
    if type(value) is py_type:
        if item_type is None:
            return OK, is_variable
        # Upstream iterates the expected value itself; only items that are lists constrain the reply's items.
        if not isinstance(expected, (list, dict, str, tuple)):
            raise _Unscorable(f"{where}: expected value {expected!r} is not iterable")
        for candidate in expected:
            if type(candidate) is list and not all(_item_type_ok(x, candidate, item_type) for x in value):
                continue
            return OK, is_variable
    if expected_type is not None and (type(value) is expected_type or expected == value):
        return (fail(f"{where}: an item of {value!r} has the wrong type") if type(value) is py_type else OK), True
    return fail(f"{where}: expected type {py_type.__name__}, got {type(value).__name__}"), False


def _item_type_ok(item: Any, expected_items: list, item_type: type) -> bool:
    item = _as_bool(item)
    return type(item) is item_type or type(item) is list or item == expected_items


def _standardized(values) -> list:
    return [standardize_string(v) if type(v) is str else v for v in values]


def _check_list(where: str, value: list, expected: Any) -> Verdict:
    if not isinstance(expected, (list, str, tuple, dict)):
        raise _Unscorable(f"{where}: expected value {expected!r} is not iterable")
    if _standardized(value) != _standardized(expected):
        return fail(f"{where}: {value!r} differs from {expected!r} (element-wise, after standardisation)")
    return OK


def _check_dict(where: str, value: Any, expected: Any) -> Verdict:
    if not isinstance(value, dict):
        return fail(f"{where}: expected an object, got {type(value).__name__}")
    if not isinstance(expected, dict):
        raise _Unscorable(f"{where}: expected value {expected!r} is not an object")
    if len(value) != len(expected):
        return fail(f"{where}: expected keys {sorted(expected)}, got {sorted(value)}")
    for key, item in value.items():
        item = _as_bool(item)
        if key not in expected:
            return fail(f"{where}: unexpected key {key!r}")
        want = expected[key]
        if isinstance(want, dict):
            verdict = _check_dict(f"{where}.{key}", item, want)
            if not verdict.valid:
                return verdict
            continue
        got = standardize_string(item) if type(item) is str else item
        want = standardize_string(want) if type(want) is str else want
        if str(want) not in str(got):
            return fail(f"{where}.{key}: {item!r} does not contain {expected[key]!r}")
    return OK


def _len(where: str, expected: Any) -> int:
    if not isinstance(expected, (list, str, tuple, dict)):
        raise _Unscorable(f"{where}: expected value {expected!r} has no length")
    return len(expected)


def _check_list_of_dicts(where: str, value: list, expected: Any) -> Verdict:
    if len(value) != _len(where, expected):
        return fail(f"{where}: expected {len(expected)} items, got {len(value)}")
    if value and isinstance(expected, dict):
        raise _Unscorable(f"{where}: expected value {expected!r} is an object, not a list")
    for i, item in enumerate(value):
        verdict = _check_dict(f"{where}[{i}]", item, expected[i])
        if not verdict.valid:
            return verdict
    return OK
