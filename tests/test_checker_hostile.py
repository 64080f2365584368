"""The three benchmark checkers never raise on a reply: values nested past the recursion limit, integers too
large for a float, strings that spell unhashable literals, odd unicode -> an invalid verdict with its reason."""

from __future__ import annotations

import json
import random

import pytest

from tooln1_jax.eval import benchmarks, datasets
from tooln1_jax.eval.checkers import acebench, apibank, bfcl
from tooln1_jax.eval.checkers.common import Verdict


def nested(depth: int, kind: str = "list"):
    value = "x"
    for _ in range(depth):
        value = [value] if kind == "list" else {"k": value}
    return value


ACE_FUNCTIONS = [{"name": "f", "parameters": {"type": "dict", "required": ["a"],
                                              "properties": {"a": {"type": "array", "items": {"type": "string"}},
                                                             "x": {"type": "float"}}}}]
BFCL_FUNCTIONS = [{"name": "f", "parameters": {"type": "dict", "required": ["a"],
                                               "properties": {"a": {"type": "array", "items": {"type": "string"}},
                                                              "x": {"type": "float"}}}}]


@pytest.mark.parametrize("kind", ["list", "dict"])
@pytest.mark.parametrize("depth", [495, 600, 2_000])
def test_deeply_nested_arguments_are_an_invalid_verdict(depth, kind):
    calls = [{"f": {"a": nested(depth, kind)}}]
    verdicts = [acebench.check(ACE_FUNCTIONS, calls, {"f": {"a": ["x"]}}),
                bfcl.check(BFCL_FUNCTIONS, calls, [{"f": {"a": [["x"]]}}], "simple"),
                apibank.check([{"name": "f", "parameters": {"a": {"type": "list"}}}], calls,
                              {"api_name": "f", "param_dict": {"a": str(nested(3))}})]
    for verdict in verdicts:
        assert isinstance(verdict, Verdict) and not verdict.valid and verdict.reason


def test_without_whitespace_past_the_recursion_limit_names_the_reason():
    verdict = acebench.check(ACE_FUNCTIONS, [{"f": {"a": nested(600)}}], {"f": {"a": ["x"]}})
    assert verdict == Verdict(False, "a value is nested too deeply to check (Python's recursion limit)")


def test_an_integer_too_large_for_a_float_is_invalid():
    calls = [{"f": {"a": ["x"], "x": 10 ** 400}}]
    assert bfcl.check(BFCL_FUNCTIONS, calls, [{"f": {"a": [["x"]], "x": [1.5]}}], "simple") == Verdict(
        False, "f.x: integer too large for a float")
    verdict = acebench.check(ACE_FUNCTIONS, calls, {"f": {"a": ["x"], "x": 1.5}})
    assert not verdict.valid and "integer too large for a float" in verdict.reason
    # a float-sized int still passes as a float
    assert bfcl.check(BFCL_FUNCTIONS, [{"f": {"a": ["x"], "x": 2}}], [{"f": {"a": [["x"]], "x": [2.0]}}],
                      "simple").valid


def test_apibank_string_spelling_an_unhashable_literal_is_compared_as_a_string():
    functions = [{"name": "f", "parameters": {"a": {"type": "dict"}}}]
    verdict = apibank.check(functions, [{"f": {"a": "{[1]: 2}"}}], {"api_name": "f", "param_dict": {"a": "{'k': 1}"}})
    assert not verdict.valid and "differs" in verdict.reason
    assert apibank.check(functions, [{"f": {"a": "{[1]: 2}"}}],
                         {"api_name": "f", "param_dict": {"a": "{[1]: 2}"}}).valid


HOSTILE = [float("nan"), float("inf"), 10 ** 4000, -0.0, "\ud800", "\x00", "", None, True, [], {}, [[1]],
           {"a": {"b": [None]}}, "{[1]: 2}", "{{1}}", "[" * 50, "1e999", "True", "['a', ['b']]", "{'a': 1}",
           "9" * 5000]


def test_fuzz_every_benchmark_scores_hostile_arguments_without_raising():
    """Replies calling the examples' own functions with hostile argument values, decoded from reply text."""
    rng = random.Random(0)
    scored = 0
    for name in datasets.BENCHMARKS:
        examples = datasets.load(name)
        for example in rng.sample(examples, min(60, len(examples))):
            for _ in range(4):
                function = rng.choice(example.tools) if example.tools else {"name": "f"}
                properties = (function.get("parameters") or {}).get("properties", function.get("parameters")) or {}
                arguments = {p: rng.choice(HOSTILE + [nested(rng.choice([400, 900]), rng.choice(["list", "dict"]))])
                             for p in properties if rng.random() < 0.8}
                reply = ("<think>a</think><tool_call>"
                         + json.dumps([{"name": function.get("name"), "arguments": arguments}]) + "</tool_call>")
                row = benchmarks.score_reply(example, reply)
                assert row["valid"] in (True, False) and (row["valid"] or row["reason"])
                scored += 1
    assert scored >= 600
