"""What a BFCL evaluation asks the model for: under `--prompt tooln1-bfcl` the Tool-N1 release's BFCL handler prompt,
byte for byte (reference texts produced by the release's handler code, tests/reference/TOOLN1_BFCL_HANDLER.md), and
by default BFCL's reply cap."""

from __future__ import annotations

import json

import pytest

from conftest import REPO
from tooln1_jax import assets, checkpoint
from tooln1_jax.eval import benchmarks
from tooln1_jax.rollout import sampler

GOLDEN = json.loads((REPO / "tests" / "reference" / "tooln1_bfcl_handler_prompts.json").read_text())


@pytest.fixture(scope="module")
def tokenizer():
    return assets.load_tokenizer()


@pytest.mark.parametrize("entry", GOLDEN, ids=[g["id"] for g in GOLDEN])
def test_prompt_equals_the_release_handlers(entry, tokenizer):
    example = next(e for e in benchmarks.load_examples("bfcl", [entry["category"]], None, within="bfcl")
                   if e.id == entry["id"])
    ours = benchmarks.build_prompts([example], tokenizer, prompt="tooln1-bfcl")[0]
    assert ours == entry["prompt"]
    assert "make tool_calls an empty list <tool_call>[]</tool_call>" in ours  # not the training prompt
    assert ours != benchmarks.build_prompts([example], tokenizer)[0]


def test_the_handler_prompt_is_bfcl_only(tokenizer):
    examples = benchmarks.load_examples("apibank", None, 1, within="apibank")
    with pytest.raises(ValueError, match="BFCL only"):
        benchmarks.build_prompts(examples, tokenizer, prompt="tooln1-bfcl")


def test_bfcl_replies_are_capped_as_bfcl_caps_them(monkeypatch, tokenizer):
    # BFCL's OSS handlers ask for min(4096, context left) new tokens; the other benchmarks keep 512.
    caps = []

    def replies_fn(config, params, tokenizer, *, max_new_tokens, batch_size):
        caps.append(max_new_tokens)
        return lambda prompts: [""] * len(prompts)

    monkeypatch.setattr(checkpoint, "load_model", lambda model, mesh=None, dtype=None: ("config", "params"))
    monkeypatch.setattr(sampler, "prepare", lambda config, params: params)
    monkeypatch.setattr(benchmarks, "model_replies_fn", replies_fn)
    benchmarks.evaluate("all", "model-dir", limit=1, tokenizer=tokenizer)
    assert caps == [4096, 512, 512]  # bfcl, acebench, apibank
    caps.clear()
    benchmarks.evaluate("all", "model-dir", limit=1, tokenizer=tokenizer, max_new_tokens=100)
    assert caps == [100, 100, 100]
