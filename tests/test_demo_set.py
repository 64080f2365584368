"""The shipped demo set (tooln1_jax/assets/demo): it is what `python -m tooln1_jax.data.demo_set` writes, its
answers are right by construction (read off the question, checked here against the schemas), train and test share no
question, and its Tool-N1 prompts fit one 512-token bucket."""

from __future__ import annotations

import json

import pytest

from tooln1_jax import assets
from tooln1_jax.data import converters, demo_set, loading, prepare, records


def _shipped(split: str) -> list[dict]:
    return [json.loads(line) for line in assets.path("demo", f"{split}.jsonl").read_text().splitlines()]


def test_the_shipped_files_are_the_generator_output(tmp_path):
    demo_set.main(["--out", str(tmp_path)])
    for split in ("train", "test"):
        assert (tmp_path / f"{split}.jsonl").read_text() == assets.path("demo", f"{split}.jsonl").read_text(), split


def test_the_schemas_are_the_glaive_sample_ones():
    converted = converters.convert("sharegpt", prepare.shipped_samples()["sharegpt"])
    sample_tools = [json.dumps(t, sort_keys=True) for r in converted.records for t in r["tools"]]
    for record in _shipped("train") + _shipped("test"):
        assert len(record["tools"]) == 2
        for tool in record["tools"]:
            assert json.dumps(tool, sort_keys=True) in sample_tools, tool["name"]


def test_each_answer_calls_an_offered_tool_with_its_schema_and_the_question_value():
    for record in _shipped("train") + _shipped("test"):
        (call,) = record["answer"]
        (tool,) = [t for t in record["tools"] if t["name"] == call["name"]]
        schema = tool["parameters"]
        assert set(call["arguments"]) == set(schema["required"]) == set(schema["properties"])
        question = record["messages"][0]["content"]
        for key, value in call["arguments"].items():
            assert isinstance(value, {"string": str, "integer": int}[schema["properties"][key]["type"]])
            assert f" {value}" in question, (question, value)  # the value is written in the question
        assert records.answer_problem(record["answer"], record["tools"]) is None


def test_train_and_test_share_no_question():
    train = {r["messages"][0]["content"] for r in _shipped("train")}
    test = [r["messages"][0]["content"] for r in _shipped("test")]
    assert test and not train & set(test)
    assert len({r["id"] for r in _shipped("train") + _shipped("test")}) == len(train) + len(test)


@pytest.mark.parametrize("split", ["train", "test"])
def test_the_prompts_fit_one_512_token_bucket(split):
    rows = loading.load_records("demo", split, assets.load_tokenizer())
    lengths = [len(r["prompt_ids"]) for r in rows]
    assert len(rows) == len(_shipped(split)) and 400 < max(lengths) <= 512
