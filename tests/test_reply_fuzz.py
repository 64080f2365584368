"""Reply parsing on hostile input: linear time on tag floods and huge replies, and the exact semantics of the
regexes it replaced (`<tool_call>(.*?)</tool_call>`, `<think>(.*?)</think>`, kept here only as the reference).

The fuzz corpus (>= 10,000 replies) is random fragment soups plus mutations of valid replies: tag floods, deep
nesting, huge numbers, NaN/Infinity, lone surrogates and other odd unicode. Every reply must parse within a time
bound; on replies small enough for the old quadratic regexes, the parse must equal theirs field by field.
"""

import json
import random
import re
import time

import pytest

from tooln1_jax.eval import benchmarks, datasets
from tooln1_jax.rewards import toolcall

# ---- the reference: the regex parser as it was before the linear rewrite ----
_REF_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
_REF_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)


def reference_parse(reply, block="last") -> toolcall.ParsedReply:
    text = toolcall.reply_text(reply) if isinstance(reply, str) else ""
    has_think = "<think>" in text and "</think>" in text
    match = _REF_THINK.search(text)
    think = match.group(1) if match else None
    blocks = _REF_BLOCK.findall(text)
    if not blocks:
        return toolcall.ParsedReply(text, has_think, think, None, toolcall.NO_BLOCK)
    status, value = toolcall._decode_block(blocks[0] if block == "first" else blocks[-1])
    if status != toolcall.OK:
        return toolcall.ParsedReply(text, has_think, think, None, status)
    if not toolcall._is_call_list(value):
        return toolcall.ParsedReply(text, has_think, think, None, toolcall.BAD_STRUCTURE, value)
    return toolcall.ParsedReply(text, has_think, think, value, toolcall.OK, value)


# ---- the corpus ----
TAGS = ["<tool_call>", "</tool_call>", "<think>", "</think>", "<|im_start|>assistant", "<|im_end|>",
        "<tool_", "call>", "</tool", "<think", "</", "<", ">"]
JSONISH = ["[", "]", "{", "}", '"', "\\", ":", ",", '"name"', '"arguments"', '"f"', "{}", "[]", "null", "true",
           "1e999", "-1e999", "NaN", "Infinity", "-0", "9" * 5000, "1" * 4301, "0.1e-400", '"\\ud800"',
           '"\\udfff"', '"\\u0000"', "\\u12", '"\\x"']
ODD = ["\ud800", "\udfff", "\udbff\udc00", "\U0001f600", "\x00", "\ufeff", "\u2028", "\r\n", "\t", " ", "é",
       "\u0301", "\uffff", "\x7f", "ø"]
VALID = [
    {"name": "weather", "arguments": {"city": "Oslo", "days": 3}},
    {"name": "convert", "arguments": {"value": 5.5, "unit": "km", "nested": {"a": [1, {"b": None}]}}},
    {"name": "f", "arguments": {}},
]
ANSWERS = [VALID[:2], VALID[2:], [], json.dumps(VALID[:1]), "[{"]


def valid_reply(rng: random.Random) -> str:
    calls = rng.sample(VALID, rng.randint(0, len(VALID)))
    body = json.dumps(calls if rng.random() < 0.8 else json.dumps(calls))
    return rng.choice(["", "<think>plan</think>", "<think>a</think>\n"]) + f"<tool_call>{body}</tool_call>"


def soup(rng: random.Random) -> str:
    pools = (TAGS, JSONISH, ODD)
    return "".join(rng.choice(rng.choice(pools)) for _ in range(rng.randint(0, 40)))


def mutate(rng: random.Random, text: str) -> str:
    for _ in range(rng.randint(1, 4)):
        i, j = sorted(rng.randrange(len(text) + 1) for _ in range(2))
        kind = rng.randrange(5)
        if kind == 0:  # delete a slice
            text = text[:i] + text[j:]
        elif kind == 1:  # duplicate a slice
            text = text[:j] + text[i:j] * rng.randint(1, 5) + text[j:]
        elif kind == 2:  # insert a fragment
            text = text[:i] + rng.choice(TAGS + JSONISH + ODD) + text[i:]
        elif kind == 3:  # a tag flood
            text = text[:i] + rng.choice(TAGS) * rng.randint(1, 200) + text[i:]
        else:  # nesting
            depth = rng.randint(1, 1200)
            text = text[:i] + "[" * depth + text[i:j] + "]" * rng.choice([0, depth]) + text[j:]
    return text


def corpus(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for k in range(n):
        kind = k % 4
        if kind == 0:
            out.append(soup(rng))
        elif kind == 1:
            out.append(mutate(rng, valid_reply(rng)))
        elif kind == 2:
            out.append(mutate(rng, soup(rng) + valid_reply(rng) + soup(rng)))
        else:
            out.append(valid_reply(rng) + soup(rng))
    return out


def same(a: toolcall.ParsedReply, b: toolcall.ParsedReply) -> bool:
    return repr(a) == repr(b)  # repr: NaN inside decoded values compares equal to itself


def _timed_parse(reply: str, block: str):
    start = time.perf_counter()
    parsed = toolcall.parse_reply(reply, block)
    return parsed, time.perf_counter() - start


def test_fuzz_matches_the_regex_reference_within_a_time_bound():
    replies = corpus(10_000)
    assert len(replies) >= 10_000
    for reply in replies:
        for block in ("first", "last"):
            parsed, elapsed = _timed_parse(reply, block)
            if elapsed >= 0.5:  # a pause of the machine (GC, a neighbour) is not slow parsing: it must repeat
                elapsed = min(_timed_parse(reply, block)[1] for _ in range(3))
            assert elapsed < 0.5, f"{elapsed:.2f} s on a reply of {len(reply)} characters"
            assert same(parsed, reference_parse(reply, block)), reply[:200]
        answer = ANSWERS[len(reply) % len(ANSWERS)]
        for variant in toolcall.VARIANTS:
            assert 0.0 <= toolcall.score(reply, answer, variant) <= 1.0


def test_fuzz_corpus_reaches_every_parse_status():
    statuses = {toolcall.parse_reply(r).status for r in corpus(2_000)}
    assert statuses == {toolcall.OK, toolcall.NO_BLOCK, toolcall.BAD_JSON, toolcall.BAD_STRUCTURE}


def test_overlapping_and_nested_tags_as_the_regex_reads_them():
    cases = ["<tool_call><tool_call>[]</tool_call></tool_call>", "<tool_call>[]</tool_call></tool_call>",
             "</tool_call><tool_call>{}</tool_call>x<tool_call>[]", "<think><think>a</think></think>",
             "</think><think>", "<tool_call></tool_call><tool_call>[]</tool_call>", "<tool_call></tool_call>",
             "<think></think>", "<tool_call>" * 3 + "</tool_call>" * 3]
    for reply in cases:
        for block in ("first", "last"):
            assert same(toolcall.parse_reply(reply, block), reference_parse(reply, block)), reply


BIG = [
    ("16k opening tags", "<tool_call>" * 16_384),
    ("16k opening think tags", "<think>" * 16_384 + "<tool_call>" * 16_384),
    ("16k closed empty blocks", "<tool_call></tool_call>" * 16_384),
    ("2 MB reply", "<think>" + "x" * 2_000_000 + "<tool_call>[1" + "<tool_call>" * 1000),
    ("2 MB block", "<think>a</think><tool_call>" + json.dumps([{"name": "f", "arguments": {"s": "y" * 2_000_000}}])
     + "</tool_call>"),
    ("100k nested brackets", "<think>a</think><tool_call>" + "[" * 100_000 + "]" * 100_000 + "</tool_call>"),
    ("huge number", "<tool_call>" + json.dumps([{"name": "f", "arguments": {}}])[:-1] + ", " + "9" * 100_000
     + "]</tool_call>"),
]


@pytest.mark.parametrize("name", [name for name, _ in BIG])
def test_hostile_replies_score_in_linear_time(name):
    reply = dict(BIG)[name]
    start = time.perf_counter()
    for variant in toolcall.VARIANTS:
        assert 0.0 <= toolcall.score(reply, VALID[:1], variant) <= 1.0
    toolcall.parse_reply(reply, "first")
    elapsed = time.perf_counter() - start
    # a fifth of a second per call on a busy 2-core machine; the regexes took 20 s on the 16k-tag flood
    assert elapsed < 5 * 0.2, f"{name}: {elapsed:.2f} s for 5 parses"


def test_deep_json_in_a_block_is_invalid_not_an_error():
    for depth in (999, 1_000, 5_000, 100_000):
        parsed = toolcall.parse_reply("<tool_call>" + "[" * depth + "]" * depth + "</tool_call>")
        assert parsed.status in (toolcall.BAD_JSON, toolcall.BAD_STRUCTURE)
    deep_args = "{" + '"a": {' * 2000 + "}" * 2000 + "}"
    reply = '<think>a</think><tool_call>[{"name": "f", "arguments": ' + deep_args + "}]</tool_call>"
    assert toolcall.score(reply, [{"name": "f", "arguments": {}}]) == 0.0


def test_eval_scores_hostile_replies_in_linear_time():
    examples = [datasets.load(name, limit=1)[0] for name in datasets.BENCHMARKS]
    for _, reply in BIG:
        for example in examples:
            start = time.perf_counter()
            row = benchmarks.score_reply(example, reply)
            assert time.perf_counter() - start < 1.0
            assert row["valid"] in (True, False)
