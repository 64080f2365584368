"""`tooln1 compile` compiles a config's training step with the real TPU compiler for a slice that is not here
(libtpu's topology descriptions) and reports memory per chip, FLOPs and a roofline time."""

import json
import math

import jax
import jax.numpy as jnp
import pytest
from conftest import REPO

from tooln1_jax import aot, cli, config, parallel
from tooln1_jax.models import lora

DEMO = str(REPO / "configs" / "demo.yaml")
KEYS = {"name", "bytes_per_chip", "chip_hbm_bytes", "fits", "flops", "bytes_accessed", "estimated_seconds"}


@pytest.fixture(scope="module")
def v5e():
    return aot.topology_devices("v5e:2x2")


def test_demo_step_compiles_and_fits_a_v5e_slice(tmp_path, capsys):
    out = tmp_path / "report.json"
    # the warm start's supervised program is the one the SFT case below compiles
    code = cli.main(["compile", "--config", DEMO, "--topology", "v5e:2x2", "--set", "sft.warm_start_steps=0",
                     "--json", str(out)])
    report = json.loads(out.read_text())
    assert code == 0 and report["fits"] is True and report["topology"] == "v5e:2x2"
    assert {"estimated_step_seconds", "estimated_mfu", "programs"} <= set(report)
    names = [p["name"] for p in report["programs"]]
    assert names == ["rollout_weights", "rollout_kv_cache", "rollout_prefill", "rollout_insert", "rollout_decode",
                     "rollout_compact", "old_logprobs", "ref_logprobs", "update_first", "update"]
    for p in report["programs"]:
        assert KEYS <= set(p) and p["fits"] and 0 < p["bytes_per_chip"] <= p["chip_hbm_bytes"] == 16e9 / 1
    assert 0 < report["estimated_mfu"] < 1 and report["estimated_step_seconds"] > 0
    printed = capsys.readouterr().out
    assert "fits on v5e:2x2" in printed and all(name in printed for name in names)

    # the update's FLOPs against the model's arithmetic: 6 x weights x tokens for the layers over every row token;
    # the LM head (tied, V x E) only at the reply positions it is gathered to, 8 per weight and token (its
    # forward is checkpointed, so it runs again in the backward); flash attention's 7 score-sized products per
    # layer (2 forward, 5 backward with the recompute), keys padded to its 512-key blocks. Elementwise work is
    # not counted, hence the 10% margin.
    m = config.load(DEMO).model
    e, f, h, kv, d = m.hidden_size, m.intermediate_size, m.num_heads, m.num_kv_heads, m.hidden_size // m.num_heads
    shapes = report["shapes"]["mini_batch"]
    rows, length, slots, width = shapes["rows"], shapes["row_tokens"], shapes["slots"], shapes["reply_width"]
    layer = e * h * d + 2 * e * kv * d + h * d * e + 3 * e * f
    keys = -(-length // 512) * 512
    per_row = (6 * m.num_layers * layer * length + 8 * m.vocab_size * e * slots * width
               + 7 * 2 * m.num_layers * length * keys * h * d)
    update = next(p for p in report["programs"] if p["name"] == "update")
    assert update["flops"] == pytest.approx(per_row * rows / 4, rel=0.1)  # 4 chips on the data axis
    # XLA's own count takes each loop body once: the layer scan and the attention's block scans collapse
    assert update["xla_flops"] < 0.5 * update["flops"]



def test_a_qwen3_step_compiles_with_its_head_norms(tmp_path):
    """Qwen3's shape (q/k norms, no attention biases, head_dim apart from hidden/heads) through every program."""
    out = tmp_path / "report.json"
    code = cli.main(["compile", "--config", DEMO, "--topology", "v5e:2x2", "--set", "model.preset=qwen3-0.6b",
                     "--set", "sft.warm_start_steps=0", "--set", "rollout.max_new_tokens=16",
                     "--set", "data.max_prompt_tokens=512", "--set", "model.remat=full", "--json", str(out)])
    report = json.loads(out.read_text())
    assert code == 0 and report["fits"] is True, report
    assert report["model"]["params"] == 596_049_920  # Qwen3-0.6B's count, the q/k norms included
    flops = {p["name"]: p["flops"] for p in report["programs"]}
    assert len(flops) == 10 and all(flops[name] > 0 for name in ("rollout_prefill", "rollout_decode", "update"))

def test_loop_bodies_count_their_trip_counts(v5e):
    """XLA's cost analysis counts a loop body once; `matmul_cost` counts it per iteration, and agrees with XLA on
    the same loops counted once."""
    mesh = parallel.make_mesh({"data": -1}, v5e)
    spec = jax.ShapeDtypeStruct((4, 256, 512), jnp.bfloat16, sharding=parallel.batch_sharding(mesh, 3))
    w = jax.ShapeDtypeStruct((512, 512), jnp.bfloat16, sharding=parallel.replicated(mesh))

    def f(x, w):
        x = jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=6)[0]
        return jax.lax.while_loop(lambda c: c[1] < 3, lambda c: (c[0] @ w, c[1] + 1), (x, 0))[0]

    traced = jax.jit(f).trace(spec, w)
    xla = traced.lower().compile().cost_analysis()
    one = 2 * 4 * 256 * 512 * 512  # one product, all devices
    flops, _ = aot.matmul_cost(traced.jaxpr.jaxpr, while_trips=3)
    assert flops == 9 * one
    once, _ = aot.matmul_cost(traced.jaxpr.jaxpr, while_trips=None)
    assert once == 2 * one and xla["flops"] == pytest.approx(once / 4, rel=0.05)  # per device


def test_a_step_that_does_not_fit_exits_1_naming_the_program(tmp_path, capsys):
    # a 1.2B-parameter embedding (vocabulary x 8192, float32, replicated on the 4 chips of the data axis) with its
    # AdamW moments is 20 GB per chip, over a v5e's 16 GB
    out = tmp_path / "report.json"
    code = cli.main(["compile", "--config", DEMO, "--topology", "v5e:2x2", "--sft", "--set", "model.hidden_size=8192",
                     "--set", "sft.max_seq_len=256", "--set", "data.max_prompt_tokens=128", "--json", str(out)])
    report = json.loads(out.read_text())
    assert code == 1 and report["fits"] is False
    (program,) = report["programs"]
    assert program["name"] == "sft_update" and not program["fits"] and program["bytes_per_chip"] > 16e9
    assert "DOES NOT FIT on v5e:2x2: sft_update needs" in capsys.readouterr().out


def test_lora_keeps_optimizer_state_and_reference_to_the_adapters(v5e):
    cfg = config.load(DEMO, ["model.lora_rank=8"])
    mesh = parallel.make_mesh({"data": -1}, v5e)
    state = aot.training_state(cfg, aot.model_config(cfg, DEMO), mesh)
    trainable = lora.partition(state.params)[0]
    # demo shape: 2 layers, hidden 64, MLP 128, 4 heads of 16, 2 KV heads; rank 8 on all seven projections
    per_layer = sum(i + o for i, o in [(64, 64), (64, 32), (64, 32), (64, 64), (64, 128), (64, 128), (128, 64)])
    assert sum(math.prod(x.shape) for x in jax.tree.leaves(trainable)) == 2 * 8 * per_layer
    adapter_bytes = 4 * 2 * 8 * per_layer  # float32, replicated on the data axis
    assert state.reference is state.params and state.reference_bytes == adapter_bytes  # shares the frozen base
    assert 2 * adapter_bytes <= aot.per_chip_bytes(state.opt_state) <= 2 * adapter_bytes + 64  # AdamW moments


def test_unknown_topology_is_a_clear_error(capsys):
    assert cli.main(["compile", "--config", DEMO, "--topology", "v5p-64"]) == 2
    assert "--topology 'v5p-64'" in capsys.readouterr().err
