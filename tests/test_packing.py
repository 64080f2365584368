"""The prefix-shared packed layout against the padded reference (tests/padded_reference.py): the same log-probs,
losses, gradients and updates, whatever the number of packed rows a pass."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import packing_cases as cases
import padded_reference
from conftest import run_on_fake_devices
from tooln1_jax import parallel
from tooln1_jax.train import grpo, packing, sequences
from tooln1_jax.train.step import StepFunctions

LR = cases.LR

RTOL = 1e-5


def test_layout_of_one_group():
    p = packing.pack_groups([[5, 6, 7]], [[[8, 9], [10]]], reply_width=4)
    assert p.tokens.tolist() == [[5, 6, 7, 8, 9, 10] + [0] * 122]
    assert p.positions[0, :6].tolist() == [0, 1, 2, 3, 4, 3]
    assert p.segment_ids[0, :7].tolist() == [1, 1, 1, 1, 1, 1, 0]
    assert p.prefix_ids[0, :7].tolist() == [0, 0, 0, 1, 1, 2, -1]
    # reply token 0 of both replies is predicted at the prompt's last token (column 2)
    assert p.predict[0].tolist() == [[2, 3, 0, 0], [2, 0, 0, 0]]
    assert p.targets[0].tolist() == [[8, 9, 0, 0], [10, 0, 0, 0]]
    assert p.sample.tolist() == [[0, 1]]
    assert p.useful_tokens == 6 and p.computed_tokens == 128


def test_plan_rows_fills_rows_of_the_budget_and_keeps_groups_whole():
    lengths = [700, 650, 900, 820, 300, 560, 610, 480]
    rows, length = packing.plan_rows(lengths, budget=2048)
    assert length == 2048  # the budget's, whatever the batch's total: one shape for many batches
    assert sorted(i for row in rows for i in row) == list(range(8))
    assert all(sum(lengths[i] for i in row) <= length for row in rows)
    assert len(rows) == -(-sum(lengths) // length)  # first-fit decreasing fills them
    rows, length = packing.plan_rows([5000, 10], budget=1024)  # a group longer than the budget sets the length:
    assert length == 6144 and len(rows) == 1  # the rung above it, 128 x 48
    assert packing.plan_rows([5000, 10], budget=1024, max_length=5100)[1] == 5120  # no rung beyond the worst case
    assert packing.plan_rows([300, 200], budget=0)[1] == 384  # budget 0: the longest group's rung


def test_bucketed_padding_rows_and_slots_are_empty_and_change_no_log_prob():
    """Groups that need five rows get six (a rung), and a row of 9 replies makes every row 12 slots wide (3 x 2^k):
    the padding is fully masked, and every real reply's log-probs are those of the padded layout."""
    rng = np.random.default_rng(21)
    sizes = [(70, [5, 9, 3]), (66, [7, 1, 4]), (60, [8, 8, 2]), (75, [2, 6, 5]), (72, [4, 4, 4]),
             (5, [2, 1, 3]), (4, [1, 2, 2]), (6, [3, 3])]  # five groups of 78..88 tokens (a row of 128 each), and
    # three short ones that join the longest: 11 replies in its row
    prompts = [rng.integers(1, 64, n).tolist() for n, _ in sizes]
    replies = [[rng.integers(1, 64, n).tolist() for n in rs] for _, rs in sizes]
    packed = packing.pack_groups(prompts, replies, budget=0)
    rows, length, slots, width = packed.shape
    assert (rows, length, slots, width) == (6, 128, 12, 16)
    assert (packed.segment_ids[5] == 0).all() and (packed.prefix_ids[5] == -1).all()
    assert (packed.sample[5] == -1).all() and not packed.response_mask[5].any()
    assert sorted(packed.sample[packed.sample >= 0].tolist()) == list(range(23))
    assert not packed.response_mask[packed.sample < 0].any()
    p = cases.params()
    ref, mask = cases.padded_logprobs(p, prompts, replies)
    logp, _ = cases.packed_logprobs(p, cases.packed_batch(packed.pad_to(rows, length, slots, mask.shape[1])))
    ours = packed.to_samples(np.asarray(logp))
    np.testing.assert_allclose(np.where(mask > 0, ours, 0), np.where(mask > 0, ref, 0), rtol=RTOL, atol=1e-6)


@pytest.mark.parametrize("budget", [0, 512], ids=["group_per_row", "several_groups_per_row"])
def test_packed_logprobs_equal_padded_for_group_sizes_1_to_8(budget):
    p = cases.params()
    shared_rows = 0
    for g in range(1, 9):
        prompts, replies = cases.groups(g, n=3, g=g)
        ref, mask = cases.padded_logprobs(p, prompts, replies)
        packed = packing.pack_groups(prompts, replies, budget=budget, reply_width=mask.shape[1])
        shared_rows += int(packed.segment_ids.max() > 1)
        logp, _ = cases.packed_logprobs(p, cases.packed_batch(packed))
        ours = packed.to_samples(np.asarray(logp))
        np.testing.assert_allclose(np.where(mask > 0, ours, 0), np.where(mask > 0, ref, 0), rtol=RTOL, atol=1e-6)
        assert np.array_equal(packed.to_samples(packed.response_mask), mask)
    assert shared_rows >= (4 if budget else 0)


def test_a_row_holding_one_long_group():
    prompts, replies = cases.groups(3, n=1, g=5, prompt_max=300, reply_max=60)
    prompts2, replies2 = cases.groups(4, n=4, g=5, prompt_max=10, reply_max=5)
    p = cases.params()
    ref, mask = cases.padded_logprobs(p, prompts + prompts2, replies + replies2)
    packed = packing.pack_groups(prompts + prompts2, replies + replies2, budget=128, reply_width=mask.shape[1])
    assert packed.sample.shape[0] >= 2 and packed.tokens.shape[1] >= len(prompts[0]) + sum(map(len, replies[0]))
    logp, _ = cases.packed_logprobs(p, cases.packed_batch(packed))
    ours = packed.to_samples(np.asarray(logp))
    np.testing.assert_allclose(np.where(mask > 0, ours, 0), np.where(mask > 0, ref, 0), rtol=RTOL, atol=1e-6)


@pytest.mark.parametrize("agg", grpo.AGG_MODES)
def test_loss_and_gradients_equal_padded(agg):
    prompts, replies = cases.groups(7, n=4, g=5)
    p = cases.params()
    ref = padded_reference.pad_groups(prompts, replies)
    adv, old, ref_logp = cases.sample_values(20, ref.response_mask.shape[1])
    packed = packing.pack_groups(prompts, replies, budget=512, reply_width=ref.response_mask.shape[1])
    kw = dict(clip_eps=0.2, kl_coef=0.01, agg=agg, max_len=32)

    def padded_loss(params):
        logp, _ = padded_reference.response_logprobs(cases.CONFIG, params, ref)
        return grpo.policy_loss(logp, old, ref_logp, adv, ref.response_mask, **kw)[0]

    def packed_loss(params):
        logp, _ = sequences.packed_logprobs(cases.CONFIG, params, cases.packed_batch(packed))
        flat = lambda x: jnp.asarray(x).reshape(-1, x.shape[-1])  # noqa: E731
        return grpo.policy_loss(flat(logp), flat(packed.per_slot(old)), flat(packed.per_slot(ref_logp)),
                                packed.per_slot(adv).reshape(-1), flat(packed.response_mask), **kw)[0]

    loss0, grads0 = jax.value_and_grad(padded_loss)(p)
    loss1, grads1 = jax.value_and_grad(packed_loss)(p)
    assert abs(float(loss1) - float(loss0)) <= RTOL * abs(float(loss0))
    assert cases.max_rel_diff(grads1, grads0) < RTOL


def _deltas(new, p0):
    return jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), new, p0)


def test_update_with_micro_batches_equals_padded():
    prompts, replies = cases.groups(11, n=6, g=4)
    mesh = parallel.make_mesh({"data": 1})
    p0, packed, m1, layout = cases.packed_update(mesh, prompts, replies, budget=256, micro_rows=1)
    padded, m0 = cases.reference_update(prompts, replies)
    assert layout.tokens.shape[0] > 1  # several micro-batches of packed rows
    assert cases.max_rel_diff(_deltas(packed, p0), _deltas(padded, p0)) < RTOL
    for key in ("loss", "pg_loss", "kl", "clip_frac", "num_tokens"):
        assert abs(float(m1[key]) - float(m0[key])) <= RTOL * max(abs(float(m0[key])), 1e-6), key


def _scan_lengths(program, *args) -> list[int]:
    """The lengths of the loops at the top level of a jitted update: its micro-batch loop's is the number of passes."""
    (call,) = jax.make_jaxpr(program)(*args).eqns
    return [eqn.params["length"] for eqn in call.params["jaxpr"].eqns if eqn.primitive.name == "scan"]


def test_micro_batch_rows_set_the_number_of_passes_not_the_update():
    """`train.micro_batch_rows` (GRPOSettings.micro_batch_size): 1, 2 or all 4 packed rows a pass make 4, 2 or 1
    forward/backward passes, and the same update."""
    prompts, replies = cases.groups(18, n=6, g=3)
    mesh = parallel.make_mesh({"data": 1})
    p0 = cases.params()
    steps = StepFunctions(cases.CONFIG, optax.sgd(LR), mesh, p0)
    packed = packing.pack_groups(prompts, replies, budget=128, rows_multiple=4)
    assert packed.tokens.shape[0] == 4 and all(packed.response_mask[r].any() for r in range(4))
    adv, old, ref_logp = cases.sample_values(18, packed.targets.shape[2])
    batch = {**cases.packed_batch(packed), "advantages": packed.per_slot(adv), "old_logp": packed.per_slot(old),
             "ref_logp": packed.per_slot(ref_logp)}
    deltas = {}
    for micro_rows in (1, 2, 4):
        s = cases.settings(micro_rows)
        state = steps.init_opt_state(p0)
        assert _scan_lengths(steps.grpo_packed_program(batch, s), p0, state, batch) == [4 // micro_rows]
        new, _, _ = steps.grpo_update_packed(jax.tree.map(jnp.copy, p0), state, batch, s)
        deltas[micro_rows] = _deltas(new, p0)
    assert cases.max_rel_diff(deltas[1], deltas[4]) < RTOL
    assert cases.max_rel_diff(deltas[2], deltas[4]) < RTOL


def test_one_minibatch_shortcut_equals_the_separate_old_logprob_pass():
    """Old log-probs from the update's own forward (stop-gradient) give the update of a separate pass."""
    prompts, replies = cases.groups(5, n=4, g=4)
    mesh = parallel.make_mesh({"data": 1})
    p0 = cases.params()
    steps = StepFunctions(cases.CONFIG, optax.sgd(LR), mesh, p0)
    packed = packing.pack_groups(prompts, replies, budget=256)
    adv, _, ref_logp = cases.sample_values(16, packed.targets.shape[2])
    batch = {**cases.packed_batch(packed), "advantages": packed.per_slot(adv), "ref_logp": packed.per_slot(ref_logp)}
    s = cases.settings(1)
    old, entropy = steps.packed_logprobs(p0, batch, micro_rows=1, temperature=s.temperature, with_entropy=True)
    separate, _, m0 = steps.grpo_update_packed(jax.tree.map(jnp.copy, p0), steps.init_opt_state(p0),
                                               {**batch, "old_logp": old}, s)
    shortcut, _, m1 = steps.grpo_update_packed(jax.tree.map(jnp.copy, p0), steps.init_opt_state(p0), batch, s,
                                               log_entropy=True)
    assert cases.max_rel_diff(_deltas(shortcut, p0), _deltas(separate, p0)) < RTOL
    assert abs(float(m1["ratio_mean"]) - 1.0) < 1e-6 and float(m1["clip_frac"]) == 0.0
    mask = packed.response_mask
    np.testing.assert_allclose(float(m1["entropy_sum"]), float(np.sum(np.asarray(entropy) * mask)), rtol=RTOL)


def test_sft_packed_equals_padded():
    prompts, replies = cases.groups(9, n=6, g=1)
    mesh = parallel.make_mesh({"data": 1})
    p0 = cases.params()
    steps = StepFunctions(cases.CONFIG, optax.sgd(LR), mesh, p0)
    ref = padded_reference.pad_groups(prompts, replies)
    loss0, grads = jax.value_and_grad(lambda p: padded_reference.sft_loss(cases.CONFIG, p, ref))(p0)
    padded = jax.tree.map(lambda p, g: p - LR * g, p0, grads)
    packed = packing.pack_groups(prompts, replies, budget=128, reply_width=ref.response_mask.shape[1])
    assert packed.tokens.shape[0] > 1
    new, _, m1 = steps.sft_update_packed(jax.tree.map(jnp.copy, p0), steps.init_opt_state(p0),
                                         cases.packed_batch(packed), 1)
    assert cases.max_rel_diff(_deltas(new, p0), _deltas(padded, p0)) < RTOL
    assert abs(float(m1["loss"]) - float(loss0)) <= RTOL * float(loss0)


@pytest.mark.slow
def test_update_equals_padded_on_an_8_device_mesh():
    out = run_on_fake_devices("""
        import sys; sys.path.insert(0, "tests")
        import jax, numpy as np
        import packing_cases as cases
        from tooln1_jax import parallel
        assert len(jax.devices()) == 8
        mesh = parallel.make_mesh({"data": 4, "fsdp": 2})
        prompts, replies = cases.groups(13, n=8, g=3)
        p0, packed, _, layout = cases.packed_update(mesh, prompts, replies, budget=256, micro_rows=8)
        padded, _ = cases.reference_update(prompts, replies)
        assert layout.tokens.shape[0] % 8 == 0
        d = lambda new: jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), new, p0)
        print("REL", cases.max_rel_diff(d(packed), d(padded)))
    """)
    rel = float(out.split("REL")[1])
    assert rel < RTOL
