"""The continuous-batching rollout engine: slots refilled as samples end, against transformers' greedy output, and
sampled tokens that depend on the sample alone (not on slot count, chunking or the device mesh)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from conftest import run_on_fake_devices, tiny_hf_model
from tooln1_jax.models import qwen2, weights
from tooln1_jax.rollout import engine, inference, kv_cache, sampler, sampling

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [100, 101, 102, 103, 104], [250, 7, 19, 42], [9]]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("engine") / "hf"
    model = tiny_hf_model(4, 2, False, vocab=320, init_std=0.15)
    model.save_pretrained(path)
    return path, model


@pytest.fixture(scope="module")
def loaded(model_dir):
    return weights.load(model_dir[0])


def _hf_greedy(model, prompt, new_tokens, eos):
    ids = torch.tensor([prompt])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=new_tokens, eos_token_id=eos, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def test_greedy_with_fewer_slots_than_samples_equals_transformers(model_dir, loaded):
    config, params = loaded
    free = sampler.generate(config, params, PROMPTS, max_new_tokens=30, temperature=0.0, stop_ids=())
    stop = int(free.tokens[0, 4])  # ends some replies early, so slots free up at different steps
    rollout = sampler.generate(config, params, PROMPTS, num_samples=3, max_new_tokens=30, temperature=0.0,
                               stop_ids=(stop,), num_slots=4, chunk_steps=5)
    assert len(set(rollout.lengths.tolist())) > 1
    for row in range(len(PROMPTS) * 3):
        p = rollout.prompt_index[row]
        expected = _hf_greedy(model_dir[1], PROMPTS[p], 30, stop)
        n = rollout.lengths[row]
        assert rollout.tokens[row, :n].tolist() == expected, row
        assert rollout.finish_reason[row] == ("stop" if expected[-1] == stop else "length")
        assert (rollout.tokens[row, n:] == 0).all() and (rollout.logprobs[row, n:] == 0).all()


def test_sampled_tokens_do_not_depend_on_slots_or_chunks(loaded):
    config, params = loaded
    kwargs = dict(num_samples=4, max_new_tokens=20, temperature=1.0, top_k=40, rng=jax.random.key(11),
                  stop_ids=(7, 19, 42))
    engine._compact_program.cache_clear()
    runs = [sampler.generate(config, params, PROMPTS, num_slots=slots, chunk_steps=chunk, **kwargs)
            for slots, chunk in ((1, 16), (3, 4), (8, 16), (None, 3))]
    assert engine._compact_program.cache_info().misses > 0  # some runs drained into a smaller pool
    assert len(set(runs[0].lengths.tolist())) > 2  # replies end at different steps
    for other in runs[1:]:
        np.testing.assert_array_equal(other.tokens, runs[0].tokens)
        np.testing.assert_array_equal(other.lengths, runs[0].lengths)
        np.testing.assert_allclose(other.logprobs, runs[0].logprobs, atol=1e-5)


def test_sampled_tokens_equal_on_an_8_device_mesh(model_dir):
    out = run_on_fake_devices(f"""
        import jax
        import numpy as np
        from tooln1_jax import parallel
        from tooln1_jax.models import weights
        from tooln1_jax.rollout import engine, sampler

        prompts = {PROMPTS!r}
        config, params = weights.load({str(model_dir[0])!r})
        kwargs = dict(num_samples=3, max_new_tokens=16, temperature=0.9, rng=jax.random.key(2), stop_ids=(7, 42))
        # 8 slots: one or two a device, never compacted; 32 slots, four a device, and frequent stop tokens: replies
        # end at different steps and the pool compacts device by device (between chunks of 4 steps)
        ragged = dict(kwargs, stop_ids=tuple(range(3, 320, 9)), chunk_steps=4)
        cases = (("fsdp=4,tensor=2", 8, kwargs), ("data=2,fsdp=4", 8, kwargs), ("data=2,fsdp=4", 32, ragged))
        for spec, slots, kw in cases:
            single = sampler.generate(config, params, prompts, num_slots=5, **kw)
            mesh = parallel.make_mesh(spec)
            _, sharded_params = weights.load({str(model_dir[0])!r}, mesh=mesh)
            engine._compact_program.cache_clear()
            sharded = sampler.generate(config, sharded_params, prompts * 2, num_slots=slots, **kw)
            n = len(single.tokens)  # the first copy of the prompts: the same seeds, so the same samples
            np.testing.assert_array_equal(sharded.tokens[:n], single.tokens)
            np.testing.assert_array_equal(sharded.lengths[:n], single.lengths)
            np.testing.assert_allclose(sharded.logprobs[:n], single.logprobs, atol=1e-4)
            print(spec, slots, "ok", "compacted" if engine._compact_program.cache_info().misses else "")
    """)
    assert "fsdp=4,tensor=2 8 ok" in out and "data=2,fsdp=4 8 ok" in out
    assert "data=2,fsdp=4 32 ok compacted" in out


def test_compaction_keeps_each_device_s_live_slots_on_that_device():
    live = np.array([0, 1, 0, 0, 1, 1, 0, 1, 0, 0, 0, 0], bool)  # 3 devices x 4 slots
    rows = engine.compaction_rows(live, devices=3, keep_per_device=2)
    np.testing.assert_array_equal(rows, [1, 0, 4, 5, 8, 9])  # device 1 keeps its 2 live slots, then the rest fill
    assert all(r // 4 == i // 2 for i, r in enumerate(rows))  # no slot leaves its device's block
    kept = engine.compaction_rows(live, devices=3, keep_per_device=4)
    assert sorted(kept.tolist()) == list(range(12)) and live[kept].sum() == live.sum()


def test_race_draws_follow_the_weights_and_skip_zeros():
    rng = np.random.default_rng(0)
    weights_ = rng.random(1000) ** 4
    weights_[rng.random(1000) < 0.5] = 0.0  # half the entries can never be drawn
    draws = 40000
    keys = jax.random.split(jax.random.key(0), draws)
    picks = np.asarray(sampling.race(jnp.broadcast_to(jnp.asarray(weights_, jnp.float32), (draws, 1000)), keys))
    counts = np.bincount(picks, minlength=1000)
    expected = weights_ / weights_.sum()
    assert counts[weights_ == 0].sum() == 0
    tv = 0.5 * np.abs(counts / draws - expected).sum()
    assert tv < 3 * 0.5 * np.sqrt(expected * (1 - expected) / draws).sum() + 0.005, tv
    u = np.asarray(sampling.uniforms(keys[:64], 1000))
    assert 0 < u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.0015


def test_stop_on_the_first_token(loaded):
    config, params = loaded
    free = sampler.generate(config, params, PROMPTS, max_new_tokens=8, temperature=0.0, stop_ids=())
    first = int(free.tokens[2, 0])
    rollout = sampler.generate(config, params, PROMPTS, num_samples=2, max_new_tokens=8, temperature=0.0,
                               stop_ids=(first,), num_slots=2)
    for row in (4, 5):
        assert rollout.lengths[row] == 1 and rollout.finish_reason[row] == "stop"
        assert rollout.tokens[row, 0] == first and (rollout.tokens[row, 1:] == 0).all()
    np.testing.assert_array_equal(rollout.tokens[:4], np.repeat(free.tokens[:2], 2, axis=0)
                                  * (np.arange(8) < rollout.lengths[:4, None]))


def test_budget_exhaustion_per_sample(loaded):
    """Each sample stops at its own budget (finish 'length'); slots it frees go to waiting samples."""
    config, params = loaded
    limits = np.array([1, 7, 3, 12, 2, 5], np.int32)
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[3]]
    out = engine.run(config, inference.prepare(config, params), prompts, num_samples=2, limits=limits,
                     sampling=sampling.Sampling(temperature=1.0), stop_ids=(), rng=jax.random.key(0),
                     mesh=inference.mesh_of(params), sample_ids=np.arange(6, dtype=np.uint32), num_slots=2,
                     chunk_steps=4)
    np.testing.assert_array_equal(out.lengths, limits)
    assert list(out.finish_reason) == ["length"] * 6
    assert ((out.tokens != 0).sum(1) <= limits).all() and (out.logprobs[np.arange(12) >= limits[:, None]] == 0).all()
    stats = out.stats
    assert stats.useful_tokens == limits.sum() and stats.slot_steps == 2 * stats.decode_steps
    assert stats.slot_steps < 2 * limits.sum()  # refilled slots: far from one sample's budget per slot at a time


def test_empty_queue_does_nothing(loaded):
    config, params = loaded
    out = engine.run(config, inference.prepare(config, params), [], num_samples=3, limits=np.zeros(0, np.int32),
                     sampling=sampling.Sampling(), stop_ids=(1,), rng=jax.random.key(0),
                     mesh=inference.mesh_of(params), sample_ids=np.zeros(0, np.uint32))
    assert out.tokens.shape[0] == 0 and out.lengths.shape == (0,) and out.finish_reason.shape == (0,)
    assert out.stats == engine.RolloutStats()


def test_bad_input_names_what_is_wrong(loaded):
    config, params = loaded
    with pytest.raises(ValueError, match="prompt 2 is empty"):
        sampler.generate(config, params, [[1], [2], []], max_new_tokens=4)
    with pytest.raises(ValueError, match=r"prompt 1 has token ids outside \[0, 320\)"):
        sampler.generate(config, params, [[1], [5, 320]], max_new_tokens=4)
    with pytest.raises(ValueError, match=r"prompt 0 has token ids outside"):
        sampler.generate(config, params, [[-1]], max_new_tokens=4)
    for budget in (0, -3):
        with pytest.raises(ValueError, match=f"max_new_tokens must be > 0, got {budget}"):
            sampler.generate(config, params, [[1]], max_new_tokens=budget)
    with pytest.raises(ValueError, match="num_slots must be >= 1"):
        sampler.generate(config, params, [[1]], max_new_tokens=4, num_slots=0)
    with pytest.raises(ValueError, match="chunk_steps must be >= 1"):
        sampler.generate(config, params, [[1]], max_new_tokens=4, chunk_steps=0)
    with pytest.raises(ValueError, match="inference dtype must be"):
        sampler.generate(config, params, [[1]], max_new_tokens=4, inference_dtype="int8")


def test_decode_layout_forward_equals_the_model(loaded):
    """The decode forward over per-layer caches (prefill in two chunks, then single tokens) gives the model's
    logits at every position."""
    config, params = loaded
    w = inference.prepare(config, params)
    tokens = np.array([[5, 6, 7, 8, 9, 10, 11, 12], [3, 4, 250, 7, 19, 42, 1, 2]])
    expected = np.asarray(qwen2.forward(config, params, tokens))
    caches = kv_cache.allocate(config, 2, 16, w.dtype)
    positions = np.broadcast_to(np.arange(8), (2, 8))
    got = []
    for lo, hi in ((0, 3), (3, 6), (6, 7), (7, 8)):
        hidden, caches = inference.forward(config, w, tokens[:, lo:hi], positions[:, lo:hi], caches, 8)
        got.append(np.asarray(inference.logits(w, hidden)))
    np.testing.assert_allclose(np.concatenate(got, axis=1), expected, atol=2e-4, rtol=1e-4)


def test_compiled_decode_copies_no_cache_and_no_weight(loaded):
    """The decode chunk updates the donated per-layer caches in place and reads the weights as they are: its
    compiled HLO has no copy or transpose of a cache-sized or weight-sized buffer."""
    import re

    config, params = loaded
    w = inference.prepare(config, params)
    slots, capacity = 8, 64
    treedef, shardings = engine._shardings_of(w)
    decode = engine._decode_program(config, sampling.Sampling(1.0), (1,), inference.mesh_of(params), treedef,
                                    shardings, slots, capacity, 32, 4)
    caches = kv_cache.allocate(config, slots, capacity, w.dtype)
    state = engine.SlotState(token=np.ones(slots, np.int32), pos=np.arange(slots, dtype=np.int32),
                             step=np.zeros(slots, np.int32), sample_id=np.arange(slots, dtype=np.uint32),
                             live=np.ones(slots, bool), limit=np.full(slots, 8, np.int32))
    hlo = decode.lower(w, caches, state, jax.random.key(0), jnp.bool_(False), jnp.int32(-1)).compile().as_text()
    big = {(slots, config.num_key_value_heads, capacity, config.head_dim)}
    big |= {tuple(x.shape) for x in jax.tree.leaves(w) if x.size >= 64 * 64}
    moved = [tuple(int(d) for d in dims.split(",")) for dims in
             re.findall(r"= f32\[([\d,]+)\]\{[\d,]*\} (?:copy|transpose)\(", hlo)]
    assert not [shape for shape in moved if shape in big], moved
    assert "f32[8,2,64,16]" in hlo  # the cache shape is spelled as the search expects


def test_compaction_compiled_for_a_tpu_slice_moves_no_cache_between_chips():
    """The compaction program for v5p:2x2x2 (8 chips, 2 hosts), compiled by libtpu: no collective, and per chip no
    more than its own slots' caches in and out (a global gather would all-gather every layer's cache)."""
    from tooln1_jax import aot, parallel

    mesh = parallel.make_mesh({"fsdp": -1}, aot.topology_devices("v5p:2x2x2"))
    config = qwen2.Qwen2Config(vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                               num_attention_heads=4, num_key_value_heads=2, dtype="bfloat16")
    slots, keep, capacity = 64, 16, 2048
    caches = tuple((s, s) for s in (jax.ShapeDtypeStruct((slots, 2, capacity, 64), jnp.bfloat16,
                                                          sharding=kv_cache.sharding(config, mesh, slots, capacity)),)
                   * config.num_hidden_layers)
    rows = jax.ShapeDtypeStruct((keep,), jnp.int32, sharding=parallel.batch_sharding(mesh, 1))
    compiled = engine._compact_program(config, mesh, slots, capacity, keep).lower(caches, rows).compile()
    hlo = compiled.as_text()
    assert not any(op in hlo for op in ("all-gather", "all-to-all", "collective-permute", "all-reduce"))
    per_chip_in = kv_cache.nbytes(config, slots // 8, capacity, 2)
    memory = compiled.memory_analysis()
    assert memory.temp_size_in_bytes + memory.output_size_in_bytes <= per_chip_in
