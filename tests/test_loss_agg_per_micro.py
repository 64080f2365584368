"""grpo.loss_agg "token-mean-per-micro" (verl 0.2, the Tool-N1 release): the update is the mean over micro-batches of
each micro-batch's token-mean loss (a micro-batch: `train.micro_batch_rows` packed rows); with one micro-batch it is
"token-mean"."""

from __future__ import annotations

import jax
import numpy as np

from packing_cases import CONFIG, LR, groups, max_rel_diff, packed_batch, packed_update, sample_values, settings
from tooln1_jax import parallel
from tooln1_jax.train import grpo, sequences


def sgd_grad(p0, new):
    return jax.tree.map(lambda a, b: (np.asarray(a) - np.asarray(b)) / LR, p0, new)


def test_one_micro_batch_per_micro_equals_token_mean_in_the_packed_layout():
    mesh = parallel.single_device_mesh()
    prompts, replies = groups(seed=4, n=2, g=3)
    p0, token_mean, _, packed = packed_update(mesh, prompts, replies, budget=4096, micro_rows=1)
    _, per_micro, _, _ = packed_update(mesh, prompts, replies, budget=4096, micro_rows=1,
                                       loss_agg="token-mean-per-micro")
    assert packed.tokens.shape[0] == 1  # everything in one row: one micro-batch
    assert max_rel_diff(sgd_grad(p0, per_micro), sgd_grad(p0, token_mean)) < 1e-5


def test_per_micro_batch_weighting_in_the_packed_layout_is_the_mean_of_row_token_means():
    """Several packed rows, one a micro-batch: the update is the mean over rows of each row's token-mean loss,
    written out here from the packed log-probs of each row alone."""
    mesh = parallel.single_device_mesh()
    prompts, replies = groups(seed=5, n=6, g=3)
    p0, per_micro, _, packed = packed_update(mesh, prompts, replies, budget=160, micro_rows=1,
                                             loss_agg="token-mean-per-micro")
    _, token_mean, _, _ = packed_update(mesh, prompts, replies, budget=160, micro_rows=1)
    rows = packed.tokens.shape[0]
    mask = np.asarray(packed.response_mask)
    assert rows >= 2 and len({int(mask[r].sum()) for r in range(rows)}) > 1  # several rows, unequal token counts
    n = sum(map(len, replies))
    adv, old, ref = sample_values(n, mask.shape[-1])
    batch = {k: np.asarray(v) for k, v in packed_batch(packed).items()}
    per_slot = {"advantages": packed.per_slot(adv), "old_logp": packed.per_slot(old),
                "ref_logp": packed.per_slot(ref)}
    g = settings(1).grpo

    def reference(p):  # verl 0.2: each micro-batch's token-mean loss / the number of micro-batches, summed
        total = 0.0
        for r in range(rows):
            one = {k: v[r:r + 1] for k, v in batch.items()}
            logp, _ = sequences.packed_logprobs(CONFIG, p, one, temperature=0.7)
            loss, _ = grpo.policy_loss(logp.reshape(-1, logp.shape[-1]),
                                       per_slot["old_logp"][r].reshape(-1, logp.shape[-1]),
                                       per_slot["ref_logp"][r].reshape(-1, logp.shape[-1]),
                                       per_slot["advantages"][r].reshape(-1), mask[r].reshape(-1, logp.shape[-1]),
                                       clip_eps=g.epsilon, kl_coef=g.beta, kl_type=g.kl_type, agg="token-mean")
            total += loss / rows
        return total

    expected = jax.grad(reference)(p0)
    assert max_rel_diff(sgd_grad(p0, per_micro), expected) < 1e-4
    assert max_rel_diff(sgd_grad(p0, token_mean), expected) > 1e-2  # the weightings differ on these rows
