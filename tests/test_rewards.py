"""Rewards: every rule of docs/FORMATS.md §4, for all four variants, plus never-raises property tests.

Expected values are worked out by hand from the rules (think credit 0.2, exact 0.8, names-only 0.2).
"""

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tooln1_jax.rewards import toolcall
from tooln1_jax.rewards.toolcall import parse_reply, score

THINK = "<think>I should call the weather tool.</think>"
WEATHER = {"name": "weather", "arguments": {"city": "Oslo", "days": 3}}
CONVERT = {"name": "convert", "arguments": {"value": 5, "unit": "km"}}
ANSWER = [WEATHER, CONVERT]


def call_block(value) -> str:
    return f"<tool_call>{json.dumps(value)}</tool_call>"


def scores(reply, answer):
    return tuple(score(reply, answer, v) for v in toolcall.VARIANTS)


# (reply, answer, (binary, binary_no_think, think_partial, name_partial))
CASES = {
    "exact match with think": (THINK + call_block(ANSWER), ANSWER, (1.0, 1.0, 1.0, 1.0)),
    "exact match without think": (call_block(ANSWER), ANSWER, (0.0, 1.0, 0.8, 0.8)),
    "only the opening think tag": ("<think>hm " + call_block(ANSWER), ANSWER, (0.0, 1.0, 0.8, 0.8)),
    "only the closing think tag": ("hm</think>" + call_block(ANSWER), ANSWER, (0.0, 1.0, 0.8, 0.8)),
    "think tags anywhere, even reversed and after the block":
        (call_block(ANSWER) + " </think> x <think>", ANSWER, (1.0, 1.0, 1.0, 1.0)),
    "call order is free": (THINK + call_block([CONVERT, WEATHER]), ANSWER, (1.0, 1.0, 1.0, 1.0)),
    "key order is free": (
        THINK + '<tool_call>[{"arguments": {"days": 3, "city": "Oslo"}, "name": "weather"},'
                ' {"arguments": {"unit": "km", "value": 5}, "name": "convert"}]</tool_call>',
        ANSWER, (1.0, 1.0, 1.0, 1.0)),
    "int vs float differ": (
        THINK + call_block([WEATHER, {"name": "convert", "arguments": {"value": 5.0, "unit": "km"}}]),
        ANSWER, (0.0, 0.0, 0.2, 0.4)),
    "int vs string differ": (
        THINK + call_block([WEATHER, {"name": "convert", "arguments": {"value": "5", "unit": "km"}}]),
        ANSWER, (0.0, 0.0, 0.2, 0.4)),
    "bool vs int differ": (
        THINK + call_block([{"name": "f", "arguments": {"x": True}}]),
        [{"name": "f", "arguments": {"x": 1}}], (0.0, 0.0, 0.2, 0.4)),
    "a missing call: names differ as a multiset": (THINK + call_block([WEATHER]), ANSWER, (0.0, 0.0, 0.2, 0.2)),
    "an extra duplicate call: multiset differs": (
        THINK + call_block([WEATHER, WEATHER, CONVERT]), ANSWER, (0.0, 0.0, 0.2, 0.2)),
    "wrong argument value, right names, no think": (
        call_block([{"name": "weather", "arguments": {"city": "Bergen", "days": 3}}, CONVERT]),
        ANSWER, (0.0, 0.0, 0.0, 0.2)),
    "last block wins (right one last)": (
        THINK + call_block([WEATHER]) + " then " + call_block(ANSWER), ANSWER, (1.0, 1.0, 1.0, 1.0)),
    "last block wins (wrong one last)": (
        THINK + call_block(ANSWER) + " then " + call_block([WEATHER]), ANSWER, (0.0, 0.0, 0.2, 0.2)),
    "last block wins even when it is malformed": (
        THINK + call_block(ANSWER) + "<tool_call>[{oops</tool_call>", ANSWER, (0.0, 0.0, 0.2, 0.2)),
    "block content spans lines and is stripped": (
        THINK + "<tool_call>\n  " + json.dumps(ANSWER, indent=2) + "\n</tool_call>", ANSWER,
        (1.0, 1.0, 1.0, 1.0)),
    "a single object counts as a one-element list": (
        THINK + call_block(WEATHER), [WEATHER], (1.0, 1.0, 1.0, 1.0)),
    "a JSON string holding the list is decoded once more": (
        THINK + "<tool_call>" + json.dumps(json.dumps(ANSWER)) + "</tool_call>", ANSWER, (1.0, 1.0, 1.0, 1.0)),
    "a JSON string holding one object is decoded and wrapped": (
        THINK + "<tool_call>" + json.dumps(json.dumps(WEATHER)) + "</tool_call>", [WEATHER], (1.0, 1.0, 1.0, 1.0)),
    "a JSON string that does not decode counts as no call": (
        THINK + '<tool_call>"not json"</tool_call>', ANSWER, (0.0, 0.0, 0.2, 0.2)),
    "triple-encoded is decoded only twice: invalid": (
        THINK + "<tool_call>" + json.dumps(json.dumps(json.dumps(ANSWER))) + "</tool_call>", ANSWER,
        (0.0, 0.0, 0.2, 0.2)),
    "no block at all": (THINK + "The weather is fine.", ANSWER, (0.0, 0.0, 0.2, 0.2)),
    "unclosed block": (THINK + "<tool_call>" + json.dumps(ANSWER), ANSWER, (0.0, 0.0, 0.2, 0.2)),
    "malformed JSON": (THINK + '<tool_call>[{"name": "weather", "arguments": {</tool_call>', ANSWER,
                       (0.0, 0.0, 0.2, 0.2)),
    "no-call answer matched by an empty list": (THINK + "<tool_call>[]</tool_call>", [], (1.0, 1.0, 1.0, 1.0)),
    "no-call answer, empty list, no think": ("<tool_call>[]</tool_call>", [], (0.0, 1.0, 0.8, 0.8)),
    "no-call answer as a JSON string": (THINK + "<tool_call>[]</tool_call>", "[]", (1.0, 1.0, 1.0, 1.0)),
    "no-call answer but the reply calls": (THINK + call_block([WEATHER]), [], (0.0, 0.0, 0.2, 0.2)),
    "no-call answer and no block: no credit beyond think": (THINK + "Nothing to do.", [], (0.0, 0.0, 0.2, 0.2)),
    "empty list against a real answer: not even a name match": (
        THINK + "<tool_call>[]</tool_call>", ANSWER, (0.0, 0.0, 0.2, 0.2)),
    "scalar number is an invalid structure": (THINK + "<tool_call>42</tool_call>", ANSWER, (0.0, 0.0, 0.2, 0.2)),
    "scalar null is an invalid structure": (THINK + "<tool_call>null</tool_call>", [], (0.0, 0.0, 0.2, 0.2)),
    "string decoding to a string is an invalid structure": (
        THINK + "<tool_call>" + json.dumps(json.dumps("weather")) + "</tool_call>", ANSWER, (0.0, 0.0, 0.2, 0.2)),
    "non-dict items are invalid": (THINK + call_block([WEATHER, "convert"]), ANSWER, (0.0, 0.0, 0.2, 0.2)),
    "an item without arguments is invalid": (
        THINK + call_block([WEATHER, {"name": "convert"}]), ANSWER, (0.0, 0.0, 0.2, 0.2)),
    "a list as a name cannot be compared: invalid": (
        THINK + call_block([{"name": ["weather"], "arguments": {}}]), [{"name": "weather", "arguments": {}}],
        (0.0, 0.0, 0.2, 0.2)),
    "extra keys in an item are ignored": (
        THINK + call_block([{**WEATHER, "id": 1}, CONVERT]), ANSWER, (1.0, 1.0, 1.0, 1.0)),
    "answer given as a JSON string": (THINK + call_block(ANSWER), json.dumps(ANSWER), (1.0, 1.0, 1.0, 1.0)),
    "answer given as a doubly encoded JSON string": (
        THINK + call_block(ANSWER), json.dumps(json.dumps(ANSWER)), (1.0, 1.0, 1.0, 1.0)),
    "undecodable answer: think credit only": (THINK + call_block(ANSWER), "[{", (0.0, 0.0, 0.2, 0.2)),
    "only the text after the last assistant marker counts": (
        "<|im_start|>system\n<think></think><|im_end|>\n<|im_start|>assistant\n" + call_block(ANSWER),
        ANSWER, (0.0, 1.0, 0.8, 0.8)),
    "think inside the reply after the marker counts": (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n" + THINK + call_block(ANSWER),
        ANSWER, (1.0, 1.0, 1.0, 1.0)),
    "unicode arguments compare by value": (
        THINK + '<tool_call>[{"name": "f", "arguments": {"city": "Troms\\u00f8"}}]</tool_call>',
        [{"name": "f", "arguments": {"city": "Tromsø"}}], (1.0, 1.0, 1.0, 1.0)),
    "nested arguments: inner key order free, inner types strict": (
        THINK + '<tool_call>[{"name": "f", "arguments": {"o": {"b": [1, 2], "a": null}}}]</tool_call>',
        [{"name": "f", "arguments": {"o": {"a": None, "b": [1, 2]}}}], (1.0, 1.0, 1.0, 1.0)),
    "nested list order matters": (
        THINK + '<tool_call>[{"name": "f", "arguments": {"o": [2, 1]}}]</tool_call>',
        [{"name": "f", "arguments": {"o": [1, 2]}}], (0.0, 0.0, 0.2, 0.4)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_rules(name):
    reply, answer, expected = CASES[name]
    assert scores(reply, answer) == expected


def test_default_variant_is_binary():
    reply = THINK + call_block(ANSWER)
    assert score(reply, ANSWER) == 1.0
    assert score(call_block(ANSWER), ANSWER) == 0.0


def test_unknown_variant_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown reward variant 'shaped'"):
        score("", [], "shaped")


def test_parse_reply_reports_think_calls_and_status():
    parsed = parse_reply("<think> plan </think> <tool_call>[{\"name\": \"a\", \"arguments\": {}}]</tool_call>")
    assert parsed.status == toolcall.OK
    assert parsed.has_think and parsed.think == " plan "
    assert parsed.calls == [{"name": "a", "arguments": {}}]

    assert parse_reply("no tags").status == toolcall.NO_BLOCK
    assert parse_reply("no tags").think is None and parse_reply("no tags").calls is None
    assert parse_reply("<tool_call>{</tool_call>").status == toolcall.BAD_JSON
    bad = parse_reply("<tool_call>[1, 2]</tool_call>")
    assert bad.status == toolcall.BAD_STRUCTURE and bad.calls is None and bad.decoded == [1, 2]


def test_parse_reply_first_or_last_block():
    reply = call_block([WEATHER]) + call_block([CONVERT])
    assert parse_reply(reply).calls == [CONVERT]
    assert parse_reply(reply, block="last").calls == [CONVERT]
    assert parse_reply(reply, block="first").calls == [WEATHER]
    with pytest.raises(ValueError, match="block must be"):
        parse_reply(reply, block="middle")


def test_match_level():
    assert toolcall.match_level([], []) == 2
    assert toolcall.match_level([WEATHER], []) == 0
    assert toolcall.match_level([CONVERT, WEATHER], ANSWER) == 2
    assert toolcall.match_level([{"name": "weather", "arguments": {}}, CONVERT], ANSWER) == 1
    assert toolcall.match_level([{"name": {"x": 1}, "arguments": {}}], [WEATHER]) == 0


# ---- property tests: arbitrary text and structures never raise and stay in range ----

RANGES = {
    "binary": {0.0, 1.0},
    "binary_no_think": {0.0, 1.0},
    "think_partial": {0.0, 0.2, 0.8, 1.0},
    "name_partial": {0.0, 0.2, 0.4, 0.8, 1.0},
}

json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=12)
call_like = st.fixed_dictionaries({"name": json_value, "arguments": json_value})
structure = st.recursive(json_leaf | call_like, lambda inner: st.lists(inner, max_size=4)
                         | st.dictionaries(st.sampled_from(["name", "arguments", "x"]), inner, max_size=3),
                         max_leaves=16)
fragments = st.sampled_from(["<think>", "</think>", "<tool_call>", "</tool_call>", "<|im_start|>assistant",
                             "[", "]", "{", "}", '"', "\\", "\n", '"name"', '"arguments"', ":", ","])
reply_text = st.lists(st.text(max_size=12) | fragments, max_size=20).map("".join)


def in_range(variant, value):
    return isinstance(value, float) and any(math.isclose(value, v) for v in RANGES[variant])


@settings(max_examples=300, deadline=None)
@given(reply=reply_text, answer=structure | st.text(max_size=30))
def test_arbitrary_text_never_raises(reply, answer):
    for variant in toolcall.VARIANTS:
        assert in_range(variant, score(reply, answer, variant))
    parse_reply(reply, "first")


@settings(max_examples=300, deadline=None)
@given(value=structure, answer=structure, think=st.booleans(), encode_twice=st.booleans())
def test_arbitrary_structures_never_raise(value, answer, think, encode_twice):
    content = json.dumps(value)
    if encode_twice:
        content = json.dumps(content)
    reply = ("<think>t</think>" if think else "") + f"<tool_call>{content}</tool_call>"
    for variant in toolcall.VARIANTS:
        for ans in (answer, json.dumps(answer)):
            assert in_range(variant, score(reply, ans, variant))


@settings(max_examples=200, deadline=None)
@given(calls=st.lists(st.fixed_dictionaries({"name": st.sampled_from(["a", "b", "c"]),
                                             "arguments": st.dictionaries(st.text(max_size=3), json_leaf,
                                                                          max_size=3)}), max_size=4),
       seed=st.randoms(use_true_random=False))
def test_any_permutation_of_the_answer_scores_full(calls, seed):
    shuffled = [dict(reversed(list(c.items()))) for c in calls]  # key order reversed too
    seed.shuffle(shuffled)
    reply = "<think>x</think><tool_call>" + json.dumps(shuffled) + "</tool_call>"
    assert scores(reply, calls) == (1.0, 1.0, 1.0, 1.0)


def test_non_string_reply_and_odd_answers_do_not_raise():
    for reply in (None, 42, b"<tool_call>[]</tool_call>"):
        assert score(reply, []) == 0.0
    for answer in (None, 3, {"name": "weather"}, [[1]], object()):
        assert score(THINK + call_block(ANSWER), answer, "name_partial") == pytest.approx(0.2)
    deep = "[" * 100_000 + "]" * 100_000
    assert score(THINK + f"<tool_call>{deep}</tool_call>", ANSWER, "think_partial") == pytest.approx(0.2)
