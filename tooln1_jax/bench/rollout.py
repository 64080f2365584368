"""Benchmark: grouped rollouts of our sampler against transformers' generate on the same shapes; prints JSON.

    python -m tooln1_jax.bench.rollout --preset 0.5b --prompts 4 --group 8 --prompt-len 256 --new-tokens 64

Both sides get the same random weights, the same prompts, plain sampling (T=1, no top-k/top-p) and exactly
`--new-tokens` new tokens per row (no stop tokens). Times include the prefill; ours excludes compilation (reported
separately). Decode step time is derived from a second timing with one new token; the memory-bandwidth bound of
a decode step is (weight bytes + KV-cache bytes read per step) / `--hbm-gbps`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _hf_model(preset: str, layers: int | None, seed: int):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tooln1_jax.models import presets

    hf = presets.hf_config(preset)
    if layers:
        hf["num_hidden_layers"] = layers
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(Qwen2Config(**hf)).eval(), hf


def run(preset="0.5b", prompts=4, group=8, prompt_len=256, new_tokens=64, repeats=3, dtype="float32",
        layers=None, compare=True, hbm_gbps=None, seed=0) -> dict:
    import jax

    from tooln1_jax.models import weights
    from tooln1_jax.models.qwen2 import Qwen2Config
    from tooln1_jax.rollout import sampler

    model, hf_config = _hf_model(preset, layers, seed)
    arrays = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    if hf_config["tie_word_embeddings"]:
        arrays.pop("lm_head.weight", None)
    config = Qwen2Config.from_hf(hf_config, dtype=dtype, param_dtype=dtype)
    params = weights.load_params(config, weights.ArraySource(hf_config, arrays))
    rng = np.random.default_rng(seed)
    prompt_ids = rng.integers(0, 151_000, (prompts, prompt_len)).tolist()
    total_tokens = prompts * group * new_tokens

    def ours(n):
        out = sampler.generate(config, params, prompt_ids, num_samples=group, max_new_tokens=n, temperature=1.0,
                               stop_ids=(), rng=jax.random.key(seed))
        assert (out.lengths == n).all()

    start = time.perf_counter()
    ours(new_tokens)
    ours(1)
    compile_and_first = time.perf_counter() - start
    seconds = _median_seconds(lambda: ours(new_tokens), repeats)
    prefill_seconds = _median_seconds(lambda: ours(1), repeats)
    step = (seconds - prefill_seconds) / max(new_tokens - 1, 1)
    result = {"benchmark": "rollout", "preset": preset, "layers": config.num_hidden_layers, "prompts": prompts,
              "group": group, "prompt_len": prompt_len, "new_tokens": new_tokens, "dtype": dtype,
              "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind), "repeats": repeats,
              "ours": {"seconds_median": round(seconds, 3), "tokens_per_s": round(total_tokens / seconds, 2),
                       "prefill_plus_one_token_seconds": round(prefill_seconds, 3),
                       "decode_step_seconds": round(step, 5),
                       "first_calls_with_compile_seconds": round(compile_and_first, 2)}}
    if hbm_gbps:
        rows, slots = prompts * group, sampler.bucket(prompt_len, 16) + sampler.bucket(new_tokens, 16)
        itemsize = np.dtype(dtype if dtype != "bfloat16" else np.float16).itemsize
        cache_bytes = 2 * config.num_hidden_layers * rows * slots * config.num_key_value_heads * config.head_dim \
            * itemsize
        weight_bytes = config.num_params * itemsize
        bound = (weight_bytes + cache_bytes) / (hbm_gbps * 1e9)
        result["ours"].update({"decode_step_bandwidth_bound_seconds": round(bound, 6),
                               "decode_step_over_bound": round(step / bound, 2),
                               "weight_bytes": weight_bytes, "kv_cache_bytes": cache_bytes})
    if compare:
        import torch

        ids = torch.tensor(prompt_ids)

        def theirs():
            torch.manual_seed(seed)
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                     num_return_sequences=group, max_new_tokens=new_tokens,
                                     min_new_tokens=new_tokens, temperature=1.0, top_k=0, top_p=1.0,
                                     eos_token_id=None, pad_token_id=0)
            assert out.shape == (prompts * group, prompt_len + new_tokens)

        hf_seconds = _median_seconds(theirs, repeats)
        result["transformers"] = {"seconds_median": round(hf_seconds, 3),
                                  "tokens_per_s": round(total_tokens / hf_seconds, 2),
                                  "torch_threads": torch.get_num_threads(), "version": __import__("transformers").__version__}
        result["speedup_tokens_per_s"] = round(hf_seconds / seconds, 2)
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="0.5b")
    parser.add_argument("--layers", type=int, default=None, help="override the layer count (quick runs)")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--no-compare", action="store_true", help="skip the transformers side")
    parser.add_argument("--hbm-gbps", type=float, default=None,
                        help="memory bandwidth for the decode-step bound (H100 SXM ~3350, H200 ~4800)")
    args = parser.parse_args(argv)
    result = run(args.preset, args.prompts, args.group, args.prompt_len, args.new_tokens, args.repeats, args.dtype,
                 args.layers, not args.no_compare, args.hbm_gbps)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
