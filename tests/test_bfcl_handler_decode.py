"""`--prompt tooln1-bfcl` reads BFCL replies as the Tool-N1 release's BFCL handler read them: compared with the
handler's own outputs on constructed replies (tests/reference/TOOLN1_BFCL_HANDLER_DECODE.md), then end to end on
BFCL examples where the handler's reading and the training reward's give opposite verdicts."""

from __future__ import annotations

import json

import pytest

import eval_variants
from conftest import REPO
from tooln1_jax.eval import benchmarks, bfcl_handler_decode, datasets
from tooln1_jax.eval.checkers import bfcl
from tooln1_jax.eval.checkers.common import is_call_list

RECORDED = json.loads((REPO / "tests" / "reference" / "tooln1_bfcl_handler_decode.json").read_text())
CASES = {entry["case"]: entry for entry in RECORDED}


def assert_reads_as_recorded(decoded: bfcl_handler_decode.HandlerDecode, release: dict) -> None:
    # repr: 5 and 5.0, True and 1 differ
    assert repr(decoded.value) == repr(release["model_responses"])
    assert (decoded.calls is None) == (release["error"] is not None)
    if decoded.calls is not None:
        assert repr(decoded.calls) == release["decoded_repr"]
    assert is_call_list(decoded.calls) == release["format_ok"]  # BFCL's AST runner: the decoded form is valid
    assert bfcl.makes_a_call(decoded.calls) == release["makes_a_call"]  # BFCL's relevance runner: a call was made


@pytest.mark.parametrize("case", CASES)
def test_first_block_reads_as_the_release_handler(case):
    entry = CASES[case]
    assert_reads_as_recorded(bfcl_handler_decode.decode(entry["reply"], block="first"), entry["release"])


@pytest.mark.parametrize("case", CASES)
def test_the_block_that_counts_reads_as_the_release_handler_reads_that_block(case):
    entry = CASES[case]
    release = entry.get("release_on_last_block", entry["release"])
    assert_reads_as_recorded(bfcl_handler_decode.decode(entry["reply"]), release)


def test_the_recorded_cases_cover_each_difference_from_the_reward_parse():
    failed = {name for name, e in CASES.items() if e["release"]["error"]}
    assert {"single object", "double-encoded string", "double-encoded single object"} <= failed
    accepted = {name for name, e in CASES.items() if not e["release"]["error"] and not e["release"]["format_ok"]}
    assert {"string arguments", "list arguments", "null arguments"} <= accepted
    assert CASES["block then a later assistant marker"]["release"]["makes_a_call"]
    assert sum("release_on_last_block" in e for e in RECORDED) >= 5


def example_of(category: str):
    return datasets.load("bfcl", [category], limit=1)[0]


def replies_to(example) -> dict[str, str]:
    """The oracle's calls written in the forms where the two readings disagree."""
    records = json.loads(eval_variants.oracle_reply(example).split("<tool_call>")[1].split("</tool_call>")[0])
    think = "<think>I should call the tool.</think>"
    return {"single object": f"{think}<tool_call>{json.dumps(records[0])}</tool_call>",
            "double-encoded": f"{think}<tool_call>{json.dumps(json.dumps(records))}</tool_call>",
            "later marker": f"{think}<tool_call>{json.dumps(records)}</tool_call><|im_start|>assistant\nDone."}


@pytest.mark.parametrize("form, handler_valid", [("single object", False), ("double-encoded", False),
                                                 ("later marker", True)])
def test_verdicts_follow_the_handler_under_its_prompt(form, handler_valid):
    example = example_of("simple")
    reply = replies_to(example)[form]
    assert benchmarks.score_reply(example, reply, prompt="tooln1-bfcl")["valid"] == handler_valid
    assert benchmarks.score_reply(example, reply)["valid"] != handler_valid  # the training prompt's reading
    # irrelevance: the handler's failed decode is "no call" (right), its decoded call a call (wrong)
    irrelevance = example_of("irrelevance")
    assert benchmarks.score_reply(irrelevance, reply, prompt="tooln1-bfcl")["valid"] == (not handler_valid)


def test_score_predictions_reads_with_the_handler_under_its_prompt(tmp_path):
    example = example_of("simple")
    path = tmp_path / "predictions.jsonl"
    path.write_text(json.dumps({"id": example.id, "reply": replies_to(example)["single object"]}) + "\n")
    handler = benchmarks.score_predictions("bfcl", path, categories=["simple"], limit=1, prompt="tooln1-bfcl")
    reward = benchmarks.score_predictions("bfcl", path, categories=["simple"], limit=1)
    assert [r["valid"] for r in handler.rows] == [False] and handler.rows[0]["status"] == "bad_structure"
    assert [r["valid"] for r in reward.rows] == [True]
    with pytest.raises(ValueError, match="BFCL only"):
        benchmarks.score_predictions("apibank", path, prompt="tooln1-bfcl")
