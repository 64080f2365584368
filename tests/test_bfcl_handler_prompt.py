"""`tooln1 eval bfcl --prompt tooln1-bfcl` renders the Tool-N1 release's BFCL handler prompt byte for byte (reference
texts produced by the release's handler code, tests/reference/TOOLN1_BFCL_HANDLER.md)."""

from __future__ import annotations

import json

import pytest

from conftest import REPO
from tooln1_jax import assets
from tooln1_jax.eval import benchmarks

GOLDEN = json.loads((REPO / "tests" / "reference" / "tooln1_bfcl_handler_prompts.json").read_text())


@pytest.mark.parametrize("entry", GOLDEN, ids=[g["id"] for g in GOLDEN])
def test_prompt_equals_the_release_handlers(entry):
    example = next(e for e in benchmarks.load_examples("bfcl", [entry["category"]], None, within="bfcl")
                   if e.id == entry["id"])
    ours = benchmarks.build_prompts([example], assets.load_tokenizer(), prompt="tooln1-bfcl")[0]
    assert ours == entry["prompt"]
    assert "make tool_calls an empty list <tool_call>[]</tool_call>" in ours  # not the training prompt
    assert ours != benchmarks.build_prompts([example], assets.load_tokenizer())[0]


def test_the_handler_prompt_is_bfcl_only():
    examples = benchmarks.load_examples("apibank", None, 1, within="apibank")
    with pytest.raises(ValueError, match="BFCL only"):
        benchmarks.build_prompts(examples, assets.load_tokenizer(), prompt="tooln1-bfcl")
