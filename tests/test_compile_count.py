"""A bounded set of compiled programs: the shape ladder, the packed shapes of the reference batch (simulated), the
compilations a GRPO run logs (`compiles/...` in metrics.jsonl) while reply lengths vary, and the persistent
compilation cache across processes."""

import math
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO
from tooln1_jax import config as config_lib
from tooln1_jax import shapes
from tooln1_jax.bench import shapes as bench_shapes
from tooln1_jax.train.metrics import read_metrics
from train_helpers import tiny_config, trainer


def _rungs(quantum: int, half_steps: bool, limit: int) -> list[int]:
    """Every rung up to `limit`, enumerated: quantum x 2^k, and quantum x 3 x 2^k with half steps."""
    factors = {2 ** k for k in range(40)} | ({3 * 2 ** k for k in range(40)} if half_steps else set())
    return sorted(quantum * f for f in factors if quantum * f <= limit)


@pytest.mark.parametrize("quantum", [1, 16, 128])
@pytest.mark.parametrize("half_steps", [True, False])
def test_the_ladder_covers_every_size_with_few_rungs_and_bounded_waste(quantum, half_steps):
    top = 45056  # the reference's longest group: a prompt of 4096 + 5 replies of 8192
    cap = -(-top // quantum) * quantum
    rungs = _rungs(quantum, half_steps, 4 * cap) + [cap]
    got = [shapes.ladder(n, quantum, top, half_steps=half_steps) for n in range(1, top + 1)]
    want = [min(r for r in rungs if r >= n and (r <= cap)) for n in range(1, top + 1)]
    assert got == want
    assert all(a <= b for a, b in zip(got, got[1:]))  # monotone: the hosts' largest bucket is a bucket
    growth = 1.5 if half_steps else 2.0
    assert all(n <= b <= growth * -(-n // quantum) * quantum for n, b in enumerate(got, 1))  # within a rung
    assert max(got) == cap  # never beyond the worst case
    assert len(set(got)) <= (2 if half_steps else 1) * math.log2(top / quantum) + 2
    assert shapes.ladder(top + 1, quantum, top) == -(-(top + 1) // quantum) * quantum  # past a wrong worst case
    uncapped = [shapes.ladder(n, quantum, half_steps=half_steps) for n in (1, 5, 100, 10_000, 10 ** 6)]
    assert uncapped == [min(r for r in _rungs(quantum, half_steps, 2 ** 24 * quantum) if r >= n)
                        for n in (1, 5, 100, 10_000, 10 ** 6)]
    with pytest.raises(ValueError, match="quantum"):
        shapes.ladder(5, 0)


def test_the_reference_batch_packs_into_few_shapes():
    """The issue's simulation: 1024 prompts x 5 replies of log-normal lengths, mini-batches of 256 prompts on the
    16 batch devices of a v5p-128. Before bucketing nearly every mini-batch had its own shape."""
    cfg = config_lib.load(REPO / "configs" / "qwen2_5_7b_grpo.yaml")
    report = bench_shapes.simulate(cfg, steps=6, devices=16, seed=0, prompt_median=800, prompt_sigma=0.6,
                                   reply_median=300, reply_sigma=0.8)
    assert report["mini_batches"] == 24
    assert report["before"]["distinct_shapes"] >= 20
    assert report["after"]["distinct_shapes"] <= 10
    assert report["after"]["computed_per_useful"] <= 1.5 * report["before"]["computed_per_useful"]
    for rows, length, slots, width in report["after"]["shapes_rows_L_S_R"]:
        assert rows % 16 == 0 and length % 128 == 0 and slots % 5 == 0 and width <= 8192
        assert length <= 4096 + 5 * 8192 and rows <= 256


def test_twenty_grpo_steps_with_varied_reply_lengths_compile_at_most_three_update_programs(tmp_path):
    """Replies end at any of 4 stop tokens of a 64-token vocabulary (about 1 in 16 tokens) or at 100 tokens, so
    their lengths vary from step to step; the packed update and log-prob passes still compile a few programs."""
    cfg = tiny_config("train.steps=20", "train.batch_size=4", "train.mini_batch_size=4", "rollout.max_new_tokens=100",
                      "model.num_layers=1", "train.pack_tokens=1024",  # a budget: rows of one length
                      "checkpoint.every=100", "train.report_to=[]", "train.compilation_cache_dir=null")
    t = trainer(cfg, tmp_path / "run")
    t.stop_ids = (5, 6, 7, 8)
    t.run(progress=False)
    t.close()
    lines = read_metrics(tmp_path / "run")
    assert len(lines) == 20
    assert len({m["reply_len/max"] for m in lines}) >= 5 and min(m["reply_len/max"] for m in lines) < 64
    update = sum(m["compiles/update"] for m in lines)
    logprobs = sum(m["compiles/logprobs"] for m in lines)
    assert 1 <= update <= 3, [m["compiles/update"] for m in lines]
    assert 1 <= logprobs <= 3, [m["compiles/logprobs"] for m in lines]  # the reference policy's pass
    assert lines[0]["compiles/rollout"] >= 1
    for m in lines:
        assert m["compiles/total"] >= m["compiles/rollout"] + m["compiles/logprobs"] + m["compiles/update"]


CACHE_SCRIPT = """
    import sys
    import jax, jax.numpy as jnp
    from tooln1_jax.train import run
    run.use_compilation_cache(sys.argv[1])
    x = jnp.arange(8.0)
    log = run.CompileLog(["f"])
    with log.phase("f"):
        jax.jit(lambda v: jnp.cumsum(jnp.sin(v) * 3.0))(x).block_until_ready()
    print("COMPILES", log.counts["f"], log.metrics()["compiles/loaded"])
"""


def _compiles_in_a_fresh_process(cache_dir: str) -> tuple[int, int]:
    """(compilations, programs loaded from the persistent cache) of one jitted call in a new process."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_ENABLE_COMPILATION_CACHE": "true",
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}  # cache even a program that compiles at once
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(CACHE_SCRIPT), cache_dir], capture_output=True,
                            text=True, env=env, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    return tuple(map(int, result.stdout.split("COMPILES")[1].split()))


def test_the_persistent_cache_spares_the_next_process_its_compilation(tmp_path):
    cache = tmp_path / "cache"
    assert _compiles_in_a_fresh_process(str(cache)) == (1, 0)
    assert any(cache.iterdir())  # the program was written
    assert _compiles_in_a_fresh_process(str(cache)) == (0, 1)  # loaded, not compiled
    assert _compiles_in_a_fresh_process("") == (1, 0)  # "": no cache
    assert config_lib.TrainConfig().compilation_cache_dir == "~/.cache/tooln1/jax_compilation_cache"  # on by default
