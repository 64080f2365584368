"""Model-backed evaluation: the prompts it builds, its ordering of replies, and an end-to-end CPU run of a tiny
random Qwen2 whose greedy replies must equal transformers' greedy generation on the same weights."""

from __future__ import annotations

import json

import pytest

import eval_variants
from conftest import hf_greedy
from tooln1_jax import assets
from tooln1_jax.cli import main as cli_main
from tooln1_jax.data import prompts
from tooln1_jax.eval import benchmarks, datasets



@pytest.fixture(scope="module")
def tokenizer():
    return assets.load_tokenizer()


def first_of_each_category(benchmark):
    return datasets.load(benchmark, limit=1)


@pytest.mark.parametrize("benchmark", datasets.BENCHMARKS)
def test_prompts_hold_the_tool_n1_system_prompt_the_tools_and_the_conversation(benchmark, tokenizer):
    examples = first_of_each_category(benchmark)
    for example, prompt in zip(examples, benchmarks.build_prompts(examples, tokenizer)):
        assert prompt.startswith("<|im_start|>system\n")
        assert prompts.DEFAULT_PREAMBLE in prompt and "<tools>" in prompt
        for tool in example.tools:
            assert json.dumps({"type": "function", "function": tool}) in prompt
        for message in example.messages:
            if message["content"]:
                assert message["content"] in prompt
        if example.context:
            assert prompt.index(example.context) < prompt.index(prompts.DEFAULT_PREAMBLE)
        assert prompt.endswith("<|im_start|>assistant\n")


def test_native_tools_prompts_use_the_templates_tools_branch(tokenizer):
    example = datasets.load("bfcl", ["multiple"], limit=1)[0]
    prompt = benchmarks.build_prompts([example], tokenizer, native_tools=True)[0]
    assert "In each action step" not in prompt  # the Tool-N1 tool block is not used
    assert prompts.DEFAULT_PREAMBLE in prompt
    for tool in example.tools:
        assert f'"name": "{tool["name"]}"' in prompt


def test_benchmark_context_reaches_the_system_message(tokenizer):
    with_context = [e for e in datasets.load("bfcl", ["live_irrelevance"]) if e.context][0]
    prompt = benchmarks.build_prompts([with_context], tokenizer)[0]
    system = prompt.split("<|im_end|>")[0]
    assert with_context.context in system
    preference = datasets.load("acebench", ["preference"], limit=1)[0]
    assert preference.context.startswith("User profile: ")
    timed = [e for e in datasets.load("acebench", ["single_turn_single_function"]) if e.context]
    assert timed and all(e.context.startswith("Current time: ") for e in timed)


def test_acebench_transcripts_become_chat_turns():
    text = "user: I need a hotel.\nsystem: Which city?\nuser: Paris,\n- for 2 nights\n"
    assert datasets.transcript_messages(text) == [
        {"role": "user", "content": "I need a hotel."},
        {"role": "assistant", "content": "Which city?"},
        {"role": "user", "content": "Paris,\n- for 2 nights"}]


def test_apibank_history_shows_earlier_calls_and_their_results(tokenizer):
    examples = datasets.load("apibank")
    later = next(e for e in examples if any(m.get("tool_calls") for m in e.messages))
    calls = [m for m in later.messages if m.get("tool_calls")]
    results = [m for m in later.messages if m["role"] == "tool"]
    assert len(calls) == len(results) >= 1
    prompt = benchmarks.build_prompts([later], tokenizer)[0]
    assert "<tool_response>" in prompt
    assert json.dumps(json.dumps([calls[0]["tool_calls"][0]]))[1:-1] in prompt  # the reference's call encoding
    assert later.ground_truth["api_name"] in {t["name"] for t in later.tools}


def test_evaluate_passes_prompts_in_example_order_and_scores_each_reply(tokenizer, tmp_path):
    categories = ["simple", "parallel", "irrelevance"]
    examples = datasets.load("bfcl", categories, limit=3)
    expected_prompts = benchmarks.build_prompts(examples, tokenizer)
    seen = []

    def replies_fn(prompt_texts):
        seen.extend(prompt_texts)
        return [eval_variants.oracle_reply(e) if i % 2 == 0 else "no call" for i, e in enumerate(examples)]

    evaluation = benchmarks.evaluate("bfcl", replies_fn, categories=categories, limit=3, tokenizer=tokenizer,
                                     out=tmp_path)
    assert seen == expected_prompts
    expected = [i % 2 == 0 or e.category == "irrelevance" for i, e in enumerate(examples)]
    assert [r["valid"] for r in evaluation.rows] == expected
    assert [r["id"] for r in evaluation.rows] == [e.id for e in examples]
    assert (tmp_path / "results.jsonl").exists() and (tmp_path / "summary.md").exists()


def test_cli_model_eval_end_to_end_matches_transformers_greedy(tmp_path, tokenizer, capsys):
    model = eval_variants.make_tiny_qwen(tmp_path / "tiny")
    out = tmp_path / "out"
    assert cli_main(["eval", "bfcl", "--model", str(tmp_path / "tiny"), "--out", str(out), "--limit", "2",
                     "--categories", "simple,irrelevance", "--max-new-tokens", "6", "--batch-size", "3"]) == 0
    assert "| simple |" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    examples = datasets.load("bfcl", ["simple", "irrelevance"], limit=2)
    assert [r["id"] for r in rows] == [e.id for e in examples]
    for row, prompt in zip(rows, benchmarks.build_prompts(examples, tokenizer)):
        assert row["reply"] == hf_greedy(model, tokenizer, prompt, 6)[0]
        # 6 tokens of a random model hold no call block: BFCL scores that wrong, except where no call is right
        assert "</tool_call>" not in row["reply"] and row["status"] == "no_block" and row["calls"] is None
        assert row["valid"] == (row["category"] == "irrelevance"), row
    summary = json.loads((out / "summary.json").read_text())["bfcl"]
    assert summary["categories"]["simple"]["n"] == 2 and summary["categories"]["irrelevance"]["n"] == 2
