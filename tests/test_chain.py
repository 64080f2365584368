"""`tooln1 chain`: held-out eval -> SFT warm start -> eval -> GRPO -> eval, with the stages' outputs and resume.

The orchestration runs end to end on a tiny random model (shipped CPU configs, shrunk by overrides); with the real
GGUF present (README "Real weights"), its first stage's greedy replies are checked against transformers'.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tooln1_jax import assets, cli

GGUF = Path(os.environ.get("TOOLN1_GGUF", Path.home() / ".cache/tooln1/qwen2.5-coder-0.5b-instruct.gguf"))
REPO = Path(__file__).resolve().parent.parent
SHRINK_SFT = ["train.steps=2", "train.batch_size=2", "train.mini_batch_size=2", "checkpoint.every=1"]
SHRINK_GRPO = ["train.steps=2", "train.batch_size=2", "train.mini_batch_size=2",
               "rollout.num_generations=2", "rollout.max_new_tokens=8", "checkpoint.every=1", "train.sample_every=0"]


def _first_ids(categories: list[str], n: int) -> list[str]:
    """The first n ids of each BFCL category, read from the shipped files directly."""
    out = []
    for category in categories:
        path = assets.path("benchmarks", "bfcl_v3", f"BFCL_v3_{category}.json")
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        out += [line["id"] for line in lines[:n]]
    return out


def _chain_args(model, out, *extra):
    args = ["chain", "--model", str(model), "--out", str(out),
            "--sft-config", str(REPO / "configs/qwen2_5_0_5b_cpu_sft.yaml"),
            "--grpo-config", str(REPO / "configs/qwen2_5_0_5b_cpu_grpo.yaml"), *extra]
    for item in SHRINK_SFT:
        args += ["--sft-set", item]
    for item in SHRINK_GRPO:
        args += ["--grpo-set", item]
    return args


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from tooln1_jax import assets, parallel
    from tooln1_jax import config as config_lib
    from tooln1_jax.models import weights
    from tooln1_jax.train import run

    cfg = config_lib.load(assets.DEMO_CONFIG)  # the demo's tiny shape, random
    model_config = run.build_config(cfg)
    params = run.build_params(cfg, model_config, parallel.single_device_mesh())
    out = tmp_path_factory.mktemp("tiny_hf")
    weights.save_hf(model_config, params, out)
    return out


@pytest.mark.slow
def test_chain_runs_every_stage_and_continues_without_redoing_them(tiny_model, tmp_path, capsys):
    out = tmp_path / "chain"
    categories = ["simple", "live_simple"]
    args = _chain_args(tiny_model, out, "--eval-categories", ",".join(categories), "--eval-limit", "1",
                       "--eval-max-new-tokens", "8")
    assert cli.main(args) == 0
    table = capsys.readouterr().out
    result = json.loads((out / "chain.json").read_text())
    assert [row["category"] for row in result["table"]] == categories + ["all (example-weighted)"]
    assert [row["n"] for row in result["table"]] == [1, 1, 2]
    for stage in ("base", "sft", "grpo"):
        rows = [json.loads(line) for line in (out / f"eval_{stage}" / "results.jsonl").read_text().splitlines()]
        assert [r["id"] for r in rows] == _first_ids(categories, 1)
    grpo_steps = [m for m in (json.loads(line) for line in (out / "grpo" / "metrics.jsonl").read_text().splitlines())
                  if "reward/mean" in m]
    assert [m["step"] for m in grpo_steps] == [1, 2]
    assert [s for s, _ in result["grpo_reward"]["per_step"]] == [1, 2]
    assert (out / "reward.png").stat().st_size > 0 and (out / "sft_model" / "config.json").exists()
    import yaml
    assert yaml.safe_load((out / "grpo" / "config.yaml").read_text())["model"]["path"] == str(out / "sft_model")
    # the SFT stage changed the weights the GRPO stage starts from
    from tooln1_jax.models import weights
    _, base = weights.load(tiny_model, dtype="float32")
    _, tuned = weights.load(out / "sft_model", dtype="float32")
    import jax
    import numpy as np
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(tuned)))

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "chain.json"
              and p.name != "chain.md" and p.name != "reward.png" and p.name != "settings.json"}
    assert cli.main(args) == 0  # everything done: nothing is run again
    assert capsys.readouterr().out.strip().endswith(table.strip().splitlines()[-1])
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_chain_rejects_an_unknown_stop_stage_and_a_missing_config(tiny_model, tmp_path, capsys):
    assert cli.main(_chain_args(tiny_model, tmp_path / "c", "--stop-after", "sft_eval")) == 2
    assert "--stop-after 'sft_eval': not a stage" in capsys.readouterr().err
    assert cli.main(["chain", "--model", str(tiny_model), "--out", str(tmp_path / "d"),
                     "--grpo-config", str(tmp_path / "none.yaml")]) == 2
    assert f"config {tmp_path / 'none.yaml'} not found" in capsys.readouterr().err
    assert not (tmp_path / "c" / "eval_base").exists()


@pytest.mark.skipif(not GGUF.exists(), reason=f"real GGUF weights not found at {GGUF} (set TOOLN1_GGUF; see README "
                                              "'Real weights')")
def test_first_stage_on_the_real_gguf_matches_transformers_greedy(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tooln1_jax.eval import benchmarks

    out = tmp_path / "chain"
    assert cli.main(["chain", "--model", str(GGUF), "--out", str(out), "--eval-categories", "simple,live_simple",
                     "--eval-limit", "1", "--eval-max-new-tokens", "24", "--stop-after", "eval_base",
                     "--sft-config", str(REPO / "configs/qwen2_5_0_5b_cpu_sft.yaml"),
                     "--grpo-config", str(REPO / "configs/qwen2_5_0_5b_cpu_grpo.yaml")]) == 0
    rows = [json.loads(line) for line in (out / "eval_base" / "results.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == _first_ids(["simple", "live_simple"], 1)
    assert not (out / "sft").exists()

    tokenizer = AutoTokenizer.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name)
    model = AutoModelForCausalLM.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name,
                                                 torch_dtype=torch.float32).eval()
    examples = benchmarks.load_examples("bfcl", ["simple", "live_simple"], 1)
    prompts = benchmarks.build_prompts(examples, assets.load_tokenizer(None))
    for row, prompt in zip(rows, prompts):
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            gen = model.generate(ids, do_sample=False, max_new_tokens=24, eos_token_id=[151645, 151643])
        expected = tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=False)
        assert row["reply"] == expected.removesuffix("<|im_end|>").removesuffix("<|endoftext|>")


def _die():
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def test_a_stage_that_is_killed_stops_the_chain_and_says_why():
    from tooln1_jax import chain

    with pytest.raises(RuntimeError, match=r"stage die failed: killed by signal 9 \(out of memory\? see `dmesg`\); "
                                           r"run the same command again"):
        chain._in_own_process(_die)
