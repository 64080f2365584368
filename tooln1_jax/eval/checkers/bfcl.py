"""BFCL v3 AST checker for the Python categories, with the official checker's verdicts.

Reproduces `eval_checker/ast_eval/ast_checker.py` of the official package (PyPI `bfcl-eval` / `nvidia-bfcl`,
Apache-2.0) and the relevance rule of its `eval_runner.py`, quirks included (tests/test_bfcl_official_agreement.py
compares the two on many generated replies). Calls and ground truth are in BFCL's form:
calls `[{name: {arg: value}}]`, ground truth `[{name: {arg: [accepted values]}}]` where `""` among the accepted
values marks an argument that may be omitted. `calls=None` means the reply had no decodable call.

Where the official checker would raise on a malformed reply (it then aborts the whole run), this one returns an
invalid verdict that says so.
"""

from __future__ import annotations

from typing import Any

from tooln1_jax.eval.checkers.common import (MAX_FLOAT_INT, OK, Verdict, fail, is_call_list, never_raises_on_depth,
                                              standardize_string)

NON_LIVE = ("simple", "multiple", "parallel", "parallel_multiple")
LIVE = ("live_simple", "live_multiple", "live_parallel", "live_parallel_multiple")
AST_CATEGORIES = NON_LIVE + LIVE
RELEVANCE_CATEGORIES = ("irrelevance", "live_irrelevance", "live_relevance")
CATEGORIES = AST_CATEGORIES + RELEVANCE_CATEGORIES

# Schema type name -> the Python type a decoded value must have ("any" is checked as a string, as upstream).
_PY_TYPES = {"string": str, "integer": int, "float": float, "boolean": bool, "array": list, "tuple": list,
             "dict": dict, "any": str}


@never_raises_on_depth
def check(functions: list[dict], calls: list[dict] | None, ground_truth: list[dict] | None,
          category: str) -> Verdict:
    """Score one reply of a BFCL category (see the module docstring for the argument forms)."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown BFCL category {category!r}; known: {', '.join(CATEGORIES)}")
    if category in RELEVANCE_CATEGORIES:
        made_call = makes_a_call(calls)
        if "irrelevance" in category:
            return fail("made a call although no function is relevant") if made_call else OK
        return OK if made_call else fail("made no call although a function is relevant")
    if calls is None:
        return fail("no decodable call")
    if not is_call_list(calls):
        return fail("calls are not in the [{name: {arg: value}}] form")
    if ground_truth is None:
        raise ValueError(f"category {category!r} needs a ground truth")
    if "parallel" in category:
        return _check_parallel(functions, calls, ground_truth)
    if "multiple" in category:
        return _check_multiple(functions, calls, ground_truth)
    if len(calls) != 1:
        return fail(f"wrong number of calls: expected 1, got {len(calls)}")
    return _check_call(functions[0] if functions else None, calls[0], ground_truth[0])


def makes_a_call(calls: list[dict] | None) -> bool:
    """The relevance rule: a decodable, well-formed, non-empty list of calls."""
    return calls is not None and is_call_list(calls) and len(calls) > 0


def _find_function(functions: list[dict], name: str) -> dict | None:
    return next((f for f in functions if f.get("name") == name), None)


def _check_multiple(functions: list[dict], calls: list[dict], ground_truth: list[dict]) -> Verdict:
    if len(calls) != len(ground_truth):
        return fail(f"wrong number of calls: expected {len(ground_truth)}, got {len(calls)}")
    expected_name = next(iter(ground_truth[0]))
    return _check_call(_find_function(functions, expected_name), calls[0], ground_truth[0])


def _check_parallel(functions: list[dict], calls: list[dict], ground_truth: list[dict]) -> Verdict:
    """Each expected call, in order, takes the first not-yet-taken reply call that passes (greedy, as upstream)."""
    if len(calls) != len(ground_truth):
        return fail(f"wrong number of calls: expected {len(ground_truth)}, got {len(calls)}")
    taken: set[int] = set()
    for i, answer in enumerate(ground_truth):
        function = _find_function(functions, next(iter(answer)))
        last = fail("no call left to match")
        for j, call in enumerate(calls):
            if j in taken:
                continue
            last = _check_call(function, call, answer)
            if last.valid:
                taken.add(j)
                break
        else:
            return fail(f"no call matches expected call {i} ({next(iter(answer))}): {last.reason}")
    return OK


def _check_call(function: dict | None, call: dict, answer: dict) -> Verdict:
    """One call against one expected call `{name: {arg: [accepted]}}` and the function's schema."""
    if function is None:
        return fail("the ground truth names a function that is not offered")
    expected = next(iter(answer.values()))
    name = function["name"]
    if name not in call:
        return fail(f"wrong function: expected {name!r}, got {next(iter(call))!r}")
    args = call[name]
    properties = function["parameters"].get("properties", {})
    for param in function["parameters"].get("required", []):
        if param not in args:
            return fail(f"{name}: missing required argument {param!r}")
    for param, value in args.items():
        if param not in properties or param not in expected:
            return fail(f"{name}: unexpected argument {param!r}")
        verdict = _check_value(f"{name}.{param}", value, properties[param], expected[param])
        if not verdict.valid:
            return verdict
    for param, accepted in expected.items():
        if param not in args and "" not in accepted:
            return fail(f"{name}: missing argument {param!r} (not optional)")
    return OK


def _check_value(where: str, value: Any, schema: dict, accepted: list) -> Verdict:
    type_name = schema.get("type")
    py_type = _PY_TYPES.get(type_name)
    if py_type is None:
        return fail(f"{where}: unsupported schema type {type_name!r}")
    item_type = None
    if type_name in ("array", "tuple"):
        item_type = _PY_TYPES.get(schema.get("items", {}).get("type"))
        if item_type is None:
            return fail(f"{where}: unsupported item type in schema {schema.get('items')!r}")
    if type_name == "float" and type(value) is int:
        if abs(value) > MAX_FLOAT_INT:  # upstream's float() raises OverflowError here
            return fail(f"{where}: integer too large for a float")
        value = float(value)  # an int is accepted where a float is declared, not the reverse

    verdict, is_variable = _check_type(where, value, accepted, py_type, item_type)
    if not verdict.valid:
        return verdict
    # A value whose type matches the ground truth's rather than the schema's (upstream: "a variable") is compared
    # exactly; otherwise strings, lists and dicts get the standardised comparison.
    if not is_variable:
        if py_type is dict:
            return _check_dict(where, value, accepted)
        if py_type is list and item_type is dict:
            return _check_list_of_dicts(where, value, accepted)
        if py_type is str:
            return _check_string(where, value, accepted)
        if py_type is list:
            return _check_list(where, value, accepted)
    if value not in accepted:
        return fail(f"{where}: value {value!r} not among {accepted!r}")
    return OK


def _answer_type(accepted: list) -> type | None:
    """Type of the first accepted value that is not the optional marker ""."""
    return next((type(a) for a in accepted if a != ""), None)


def _check_type(where: str, value: Any, accepted: list, py_type: type,
                item_type: type | None) -> tuple[Verdict, bool]:
    """(verdict, is_variable). A value of the ground truth's type passes even when the schema says otherwise."""
    answer_type = _answer_type(accepted)
    is_variable = answer_type is not None and answer_type is not py_type
    if type(value) is py_type:
        if item_type is None:
            return OK, is_variable
        # Items are checked against each list among the accepted values; a non-list accepted value passes.
        for candidate in accepted:
            if type(candidate) is list and not all(_item_type_ok(x, candidate, item_type) for x in value):
                continue
            return OK, is_variable
        return fail(f"{where}: an item of {value!r} is not of type {item_type.__name__}"), is_variable
    if answer_type is not None and type(value) is answer_type:
        return OK, True
    return fail(f"{where}: expected type {py_type.__name__}, got {type(value).__name__}"), False


def _item_type_ok(item: Any, accepted_items: list, item_type: type) -> bool:
    answer_type = _answer_type(accepted_items)
    return type(item) is item_type or (answer_type is not None and type(item) is answer_type)


def _standardized(values) -> list:
    return [standardize_string(v) if type(v) is str else v for v in values]


def _check_string(where: str, value: str, accepted: list) -> Verdict:
    if standardize_string(value) not in [standardize_string(a) for a in accepted if type(a) is str]:
        return fail(f"{where}: {value!r} not among {accepted!r} (after standardisation)")
    return OK


def _check_list(where: str, value: list, accepted: list) -> Verdict:
    # Upstream iterates every accepted value, so the optional marker "" becomes [] (an empty list then matches).
    candidates = [_standardized(a) for a in accepted if isinstance(a, (list, str))]
    if _standardized(value) not in candidates:
        return fail(f"{where}: {value!r} not among {accepted!r} (element-wise, after standardisation)")
    return OK


def _dict_matches(value: Any, candidate: Any) -> bool:
    if not isinstance(value, dict) or not isinstance(candidate, dict):
        return False
    for key, item in value.items():
        if key not in candidate or not isinstance(candidate[key], (list, str)):
            return False
        std_item = standardize_string(item) if type(item) is str else item
        if std_item not in _standardized(candidate[key]):
            return False
    return all(key in value or (isinstance(accepted, (list, str)) and "" in accepted)
               for key, accepted in candidate.items())


def _check_dict(where: str, value: dict, accepted: list) -> Verdict:
    if any(a != "" and _dict_matches(value, a) for a in accepted):
        return OK
    return fail(f"{where}: {value!r} matches none of {accepted!r} (key by key)")


def _check_list_of_dicts(where: str, value: list, accepted: list) -> Verdict:
    for candidate in accepted:
        if not isinstance(candidate, (list, str)) or len(candidate) != len(value):
            continue
        if all(candidate[i] != "" and _dict_matches(v, candidate[i]) for i, v in enumerate(value)):
            return OK
    return fail(f"{where}: {value!r} matches none of {accepted!r} (item by item)")
