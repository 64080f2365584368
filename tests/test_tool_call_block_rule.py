"""One rule for which `<tool_call>` block of a reply counts, the same in training and evaluation: the last, as the
release's training reward reads it (tests/test_rewards.py pins the reward to the release's). A reply with two
blocks must get the same verdict from the reward and from every evaluation reading of it."""

from __future__ import annotations

import json

import pytest

import eval_variants
from tooln1_jax.eval import benchmarks, datasets
from tooln1_jax.rewards import toolcall

THINK = "<think>I should call the tool.</think>"


def block(calls) -> str:
    return f"<tool_call>{json.dumps(calls)}</tool_call>"


def oracle_calls(example) -> list[dict]:
    reply = eval_variants.oracle_reply(example)
    return json.loads(reply[reply.index("<tool_call>") + len("<tool_call>"):reply.index("</tool_call>")])


def two_block_replies(right: list[dict], wrong: list[dict]) -> dict[str, str]:
    return {"right last": THINK + block(wrong) + "\n" + block(right),
            "right first": THINK + block(right) + "\n" + block(wrong)}


def test_the_rule_is_the_last_block():
    assert toolcall.BLOCK == "last"
    text = "<tool_call>[1]</tool_call> x <tool_call>[2]</tool_call>"
    assert toolcall.tool_call_block(text) == "[2]"
    assert toolcall.tool_call_block(text, "first") == "[1]"


@pytest.mark.parametrize("category", ["simple", "parallel", "irrelevance"])
@pytest.mark.parametrize("prompt", benchmarks.PROMPTS)
def test_reward_and_evaluation_read_the_same_block(category, prompt):
    example = datasets.load("bfcl", [category], limit=1)[0]
    if example.ground_truth is None:  # irrelevance: no call is right, any call wrong
        right, wrong = [], [{"name": example.tools[0]["name"], "arguments": {}}]
    else:
        right, wrong = oracle_calls(example), []
    for order, reply in two_block_replies(right, wrong).items():
        reward = toolcall.score(reply, right)
        verdict = benchmarks.score_reply(example, reply, prompt=prompt)["valid"]
        assert reward == (1.0 if order == "right last" else 0.0), order
        assert verdict == (reward == 1.0), (order, prompt)
