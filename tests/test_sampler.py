"""The rollout sampler against transformers' greedy generate, full-forward recomputation, and distributions."""

import jax
import numpy as np
import pytest
import torch

from conftest import run_on_fake_devices, tiny_hf_model
from tooln1_jax.models import qwen2, weights
from tooln1_jax.rollout import engine, inference, sampler

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [100, 101, 102, 103, 104], [250, 7, 19, 42]]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("sampler") / "hf"
    model = tiny_hf_model(4, 2, False, vocab=320, init_std=0.15)  # peaked enough that greedy text varies
    model.save_pretrained(path)
    return path, model


@pytest.fixture(scope="module")
def loaded(model_dir):
    return weights.load(model_dir[0])


def _hf_greedy(model, prompts, new_tokens, eos=None):
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=new_tokens,
                         min_new_tokens=0 if eos is not None else new_tokens, eos_token_id=eos, pad_token_id=0)
    return out[:, width:].numpy()


def _full_forward_logits(config, params, prompt, reply):
    seq = np.array([list(prompt) + list(reply)])
    logits = np.asarray(qwen2.forward(config, params, seq))[0]
    return logits[len(prompt) - 1: len(prompt) - 1 + len(reply)]  # logits that predicted each reply token


def test_greedy_equals_transformers_generate_token_for_token(model_dir, loaded):
    config, params = loaded
    rollout = sampler.generate(config, params, PROMPTS, max_new_tokens=72, temperature=0.0, stop_ids=())
    expected = _hf_greedy(model_dir[1], PROMPTS, 72)
    np.testing.assert_array_equal(rollout.tokens, expected)
    assert len(set(map(tuple, rollout.tokens.tolist()))) == len(PROMPTS)
    assert len(np.unique(rollout.tokens[0])) > 10  # not a degenerate repetition
    assert rollout.tokens.shape == (4, 72) and (rollout.lengths == 72).all()
    assert list(rollout.finish_reason) == ["length"] * 4


def test_rows_stop_independently_and_pad_after_the_stop(model_dir, loaded):
    config, params = loaded
    free = sampler.generate(config, params, PROMPTS, max_new_tokens=40, temperature=0.0, stop_ids=())
    stop = int(free.tokens[1, 6])  # a token the second row emits at step 6
    rollout = sampler.generate(config, params, PROMPTS, max_new_tokens=40, temperature=0.0, stop_ids=(stop,))
    for row in range(len(PROMPTS)):
        hits = np.flatnonzero(free.tokens[row] == stop)
        want = int(hits[0]) + 1 if hits.size else 40
        assert rollout.lengths[row] == want
        assert rollout.finish_reason[row] == ("stop" if hits.size else "length")
        np.testing.assert_array_equal(rollout.tokens[row, :want], free.tokens[row, :want])
        assert (rollout.tokens[row, want:] == 0).all() and (rollout.logprobs[row, want:] == 0).all()
    assert rollout.lengths[1] <= 7
    # and transformers agrees on where each row ends, with the same stop id as eos
    expected = _hf_greedy(model_dir[1], PROMPTS, 40, eos=stop)
    for row in range(len(PROMPTS)):
        n = rollout.lengths[row]
        np.testing.assert_array_equal(rollout.tokens[row, :n], expected[row, :n])


def test_logprobs_equal_a_full_forward_recomputation(loaded):
    config, params = loaded
    temperature = 0.7
    rollout = sampler.generate(config, params, PROMPTS[:3], num_samples=2, max_new_tokens=24,
                               temperature=temperature, top_k=50, rng=jax.random.key(3), stop_ids=())
    for row in range(6):
        prompt = PROMPTS[rollout.prompt_index[row]]
        reply = rollout.tokens[row, :rollout.lengths[row]]
        logits = _full_forward_logits(config, params, prompt, reply) / temperature
        logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - logits.max(-1, keepdims=True)
        expected = logp[np.arange(len(reply)), reply]
        np.testing.assert_allclose(rollout.logprobs[row, :len(reply)], expected, atol=2e-4, rtol=1e-4)


def test_cached_decode_logits_equal_full_forward(loaded):
    """Per-step logits of the cached decode (greedy picks = argmax) agree with a full forward at every step."""
    config, params = loaded
    rollout = sampler.generate(config, params, PROMPTS, max_new_tokens=32, temperature=0.0, stop_ids=())
    for row, prompt in enumerate(PROMPTS):
        reply = rollout.tokens[row]
        full = _full_forward_logits(config, params, prompt, reply)
        np.testing.assert_array_equal(full.argmax(-1), reply)
        logp_full = full - np.log(np.exp(full - full.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - full.max(-1, keepdims=True)
        np.testing.assert_allclose(rollout.logprobs[row], logp_full[np.arange(32), reply], atol=2e-4)


def _filtered_probs(logits, temperature, top_k, top_p):
    """Independent numpy reference of the sampling distribution: top-k, then the top-p nucleus of the
    renormalised top-k distribution (transformers' TopK -> TopP warper order)."""
    z = logits / temperature
    order = np.argsort(-z)[: top_k or len(z)]
    p = np.exp(z[order] - z[order].max())
    p /= p.sum()
    n = int(np.searchsorted(np.cumsum(p), top_p) + 1)  # smallest prefix whose mass reaches top_p
    q = np.zeros_like(z)
    q[order[:n]] = p[:n] / p[:n].sum()
    return q


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.6), (0.8, 8, 0.7)])
def test_sampling_distribution_matches_the_filtered_softmax(loaded, temperature, top_k, top_p):
    config, params = loaded
    prompt = [17, 3, 99]
    draws = 3000
    rollout = sampler.generate(config, params, [prompt], num_samples=draws, max_new_tokens=1,
                               temperature=temperature, top_k=top_k, top_p=top_p, rng=jax.random.key(7),
                               stop_ids=())
    logits = np.asarray(qwen2.forward(config, params, np.array([prompt])))[0, -1].astype(np.float64)
    expected = _filtered_probs(logits, temperature, top_k, top_p)
    counts = np.bincount(rollout.tokens[:, 0], minlength=config.vocab_size)
    assert counts[expected == 0].sum() == 0, "sampled a token the filters exclude"
    tv = 0.5 * np.abs(counts / draws - expected).sum()
    # sampling noise: E[TV] <= 0.5 * sum sqrt(p(1-p)/n); a broken filter or temperature moves TV far more
    bound = 3 * 0.5 * np.sqrt(expected * (1 - expected) / draws).sum() + 0.01
    assert tv < bound, (tv, bound)


def test_group_samples_differ_and_share_one_prefill(loaded, monkeypatch):
    config, params = loaded
    shapes = []
    original = inference.forward

    def spy(config, w, tokens, positions, caches, width):
        shapes.append((tokens.shape, caches[0][0].shape))
        return original(config, w, tokens, positions, caches, width)

    monkeypatch.setattr(inference, "forward", spy)
    for program in (engine._prefill_program, engine._decode_program):
        program.cache_clear()
    rollout = sampler.generate(config, params, PROMPTS[:3], num_samples=5, max_new_tokens=16, temperature=1.0,
                               rng=jax.random.key(0), stop_ids=())
    (prefill_tokens, prefill_cache), (decode_tokens, decode_cache) = shapes[0], shapes[1]
    assert len(shapes) == 2  # traced once each: one prefill program, one decode program
    assert prefill_tokens[1] > 1 and decode_tokens[1] == 1
    assert prefill_tokens[0] == 4 and decode_tokens[0] == 16  # P (3 -> 4) rows prefilled once; 15 -> 16 slots
    np.testing.assert_array_equal(rollout.prompt_index, np.repeat([0, 1, 2], 5))
    for p in range(3):
        group = {tuple(r) for r in rollout.tokens[p * 5:(p + 1) * 5].tolist()}
        assert len(group) > 1, "samples of one prompt should differ"
    again = sampler.generate(config, params, PROMPTS[:3], num_samples=5, max_new_tokens=16, temperature=1.0,
                             rng=jax.random.key(0), stop_ids=())
    np.testing.assert_array_equal(again.tokens, rollout.tokens)  # same key -> same output


def test_prompt_lengths_inside_one_bucket_compile_once(loaded):
    """Prompt lengths in one 32-token bucket and budgets in one 16-token bucket share their programs: prefill,
    insert and decode (one span: the live context stays inside the capacity bucket) per slot count."""
    config, params = loaded
    def compiles(prompts_of, max_new_tokens_of):
        return [sampler.generate(config, params, prompts_of(n), max_new_tokens=max_new_tokens_of(n),
                                 temperature=0.0).stats.compiles for n in range(18, 28)]

    sampler.generate(config, params, [[1] * 17], max_new_tokens=8, temperature=0.0)
    # ten prompt lengths in the 32-token bucket, and varying new-token counts <= 16
    two = compiles(lambda n: [[1] * n, [2] * (n - 5)], lambda n: 8 + n % 8)
    assert two == [4] + [0] * 9  # 2 slots: the cache allocation, prefill, insert, decode
    assert compiles(lambda n: [[1] * n], lambda n: 8) == [4] + [0] * 9  # 1 slot: the same four again
    assert compiles(lambda n: [[1] * n, [2] * n], lambda n: 9) == [0] * 10
    assert sampler.programs_built() >= 8


def test_bad_input_is_a_clear_error(loaded):
    config, params = loaded
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        sampler.generate(config, params, [[1], []], max_new_tokens=4)
    with pytest.raises(ValueError, match="no prompts"):
        sampler.generate(config, params, [], max_new_tokens=4)
    with pytest.raises(ValueError, match="exceeds the cache capacity of 512"):
        sampler.generate(config, params, [[1] * 500], max_new_tokens=13)
    with pytest.raises(ValueError, match="max_new_tokens must be > 0"):
        sampler.generate(config, params, [[1]], max_new_tokens=0)
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
            sampler.generate(config, params, [[1]], max_new_tokens=4, top_p=bad)
    with pytest.raises(ValueError, match="outside"):
        sampler.generate(config, params, [[1, 999]], max_new_tokens=4)


def test_sharded_greedy_equals_one_device(model_dir):
    out = run_on_fake_devices(f"""
        import numpy as np
        from tooln1_jax import parallel
        from tooln1_jax.models import weights
        from tooln1_jax.rollout import sampler

        prompts = {PROMPTS!r} * 2
        config, params = weights.load({str(model_dir[0])!r})
        single = sampler.generate(config, params, prompts, num_samples=2, max_new_tokens=24, temperature=0.0,
                                  stop_ids=())
        for spec in ("fsdp=4,tensor=2", "data=2,fsdp=4"):
            mesh = parallel.make_mesh(spec)
            config, sharded_params = weights.load({str(model_dir[0])!r}, mesh=mesh)
            sharded = sampler.generate(config, sharded_params, prompts, num_samples=2, max_new_tokens=24,
                                       temperature=0.0, stop_ids=())
            np.testing.assert_array_equal(sharded.tokens, single.tokens)
            np.testing.assert_allclose(sharded.logprobs, single.logprobs, atol=1e-4)
            print(spec, "ok")
    """)
    assert "fsdp=4,tensor=2 ok" in out and "data=2,fsdp=4 ok" in out


def test_prompt_seeds_make_samples_independent_of_the_batch_layout(loaded):
    config, params = loaded
    kwargs = dict(num_samples=3, max_new_tokens=10, temperature=1.0, rng=jax.random.key(5), stop_ids=())
    a = sampler.generate(config, params, [PROMPTS[0], PROMPTS[1]], prompt_seeds=[10, 11], **kwargs)
    b = sampler.generate(config, params, [PROMPTS[2], PROMPTS[1], PROMPTS[3], PROMPTS[0]],
                         prompt_seeds=[12, 11, 13, 10], **kwargs)  # other order, another batch bucket
    np.testing.assert_array_equal(a.tokens[:3], b.tokens[9:12])
    np.testing.assert_array_equal(a.tokens[3:6], b.tokens[3:6])
    c = sampler.generate(config, params, [PROMPTS[0], PROMPTS[1]], prompt_seeds=[20, 11], **kwargs)
    assert (c.tokens[:3] != a.tokens[:3]).any() and (c.tokens[3:6] == a.tokens[3:6]).all()
    with pytest.raises(ValueError, match="prompt_seeds has 1 entries for 2 prompts"):
        sampler.generate(config, params, [PROMPTS[0], PROMPTS[1]], prompt_seeds=[1], **kwargs)


def test_long_prompts_prefill_in_chunks_like_a_full_forward(loaded):
    """Prompts longer than one prefill chunk go through the cache chunk by chunk; the result is unchanged."""
    config, params = loaded
    config = config.replace(max_position_embeddings=4096)
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, config.vocab_size, 1300).tolist(), rng.integers(0, config.vocab_size, 700).tolist()]
    assert max(map(len, prompts)) > sampler.PREFILL_CHUNK
    rollout = sampler.generate(config, params, prompts, max_new_tokens=6, temperature=0.0, stop_ids=())
    for row, prompt in enumerate(prompts):
        full = _full_forward_logits(config, params, prompt, rollout.tokens[row])
        np.testing.assert_array_equal(full.argmax(-1), rollout.tokens[row])
        logp = full - np.log(np.exp(full - full.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
            - full.max(-1, keepdims=True)
        np.testing.assert_allclose(rollout.logprobs[row], logp[np.arange(6), rollout.tokens[row]], atol=2e-4)
