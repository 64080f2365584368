"""Benchmark: the rollout engine against transformers' generate; every mode prints one JSON object.

    python -m tooln1_jax.bench.rollout --preset 0.5b --prompts 4 --group 8 --prompt-len 256 --new-tokens 64
    python -m tooln1_jax.bench.rollout --mode lengthmix --layers 2 --prompts 16 --group 8 --slots 16
    python -m tooln1_jax.bench.rollout --mode real --model ~/.cache/tooln1/qwen2.5-coder-0.5b-instruct.gguf \
        --chats chats.jsonl --group 4 --new-tokens 256 --temperature 0.7

uniform: both sides get the same random weights, the same prompts, plain sampling (T=1, no top-k/top-p) and
exactly `--new-tokens` new tokens per row (no stop tokens). Times include the prefill; ours excludes compilation
(reported separately). Decode step time is derived from a second timing with one new token; the memory-bandwidth
bound of a decode step is (weight bytes + KV-cache bytes read per step) / `--hbm-gbps`.

lengthmix: a long tail of reply lengths under a benchmark-only stopping rule (each sample stops at a length drawn
in advance: most short, `--tail` of them at the cap). Ours runs `--slots` slots with continuous batching; the static
batch (today's old engine, and transformers) runs batches of `--slots` rows, each to its longest reply. Reports slot
utilisation (useful tokens / (slots x decode steps)) for both, and tokens/s (useful tokens only).

real: a model file and a chats JSONL (`tooln1 generate --messages` format); the whole `tooln1 generate` run (load
and compile included) against a plain transformers script that loads the same file and samples the same way.
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


def _models_and_prompts(preset, layers, seed, dtype, prompts: int, prompt_len: int):
    """The same random weights as a transformers model and as our (config, decode-layout weights), and random
    prompts."""
    import torch
    import transformers

    from tooln1_jax.models import presets, weights
    from tooln1_jax.models.qwen2 import Qwen2Config
    from tooln1_jax.rollout import inference

    hf_config = presets.hf_config(preset)
    if layers:
        hf_config["num_hidden_layers"] = layers
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**hf_config)).eval()
    arrays = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    if hf_config["tie_word_embeddings"]:
        arrays.pop("lm_head.weight", None)
    config = Qwen2Config.from_hf(hf_config, dtype=dtype, param_dtype=dtype)
    params = weights.load_params(config, weights.ArraySource(hf_config, arrays))
    prompt_ids = np.random.default_rng(seed).integers(0, 151_000, (prompts, prompt_len)).tolist()
    return model, config, inference.prepare(config, params), prompt_ids


def _engine_stats(stats, seconds: float | None = None) -> dict:
    """A `RolloutStats` as the benchmark reports it."""
    out = {"decode_steps": stats.decode_steps, "slot_steps": stats.slot_steps, "useful_tokens": stats.useful_tokens,
           "compiles": stats.compiles, "slot_utilisation": round(stats.utilisation, 4)}
    if seconds:
        out["tokens_per_s"] = round(stats.useful_tokens / seconds, 2)
    return out


def run(preset="0.5b", prompts=4, group=8, prompt_len=256, new_tokens=64, repeats=3, dtype="float32",
        layers=None, compare=True, hbm_gbps=None, seed=0, slots=None, chunk_steps=16) -> dict:
    """The uniform mode (see the module docstring)."""
    import jax

    from tooln1_jax.rollout import sampler

    model, config, params, prompt_ids = _models_and_prompts(preset, layers, seed, dtype, prompts, prompt_len)
    total_tokens = prompts * group * new_tokens

    def ours(n):
        out = sampler.generate(config, params, prompt_ids, num_samples=group, max_new_tokens=n, temperature=1.0,
                               stop_ids=(), rng=jax.random.key(seed), num_slots=slots, chunk_steps=chunk_steps)
        assert (out.lengths == n).all()
        return out.stats

    start = time.perf_counter()
    compiles = ours(new_tokens).compiles + ours(1).compiles
    compile_and_first = time.perf_counter() - start
    timed = []
    seconds = _median_seconds(lambda: timed.append(ours(new_tokens)), repeats)
    stats = _engine_stats(sum(timed, sampler.RolloutStats()))
    prefill_seconds = _median_seconds(lambda: ours(1), repeats)
    step = (seconds - prefill_seconds) / max(new_tokens - 1, 1)
    result = {"benchmark": "rollout", "mode": "uniform", "preset": preset, "layers": config.num_hidden_layers,
              "prompts": prompts, "group": group, "prompt_len": prompt_len, "new_tokens": new_tokens, "dtype": dtype,
              "backend": jax.default_backend(), "device": str(jax.devices()[0].device_kind), "repeats": repeats,
              "ours": {"seconds_median": round(seconds, 3), "tokens_per_s": round(total_tokens / seconds, 2),
                       "prefill_plus_one_token_seconds": round(prefill_seconds, 3),
                       "decode_step_seconds": round(step, 5),
                       "first_calls_with_compile_seconds": round(compile_and_first, 2), "compiles": compiles,
                       "slot_utilisation": stats["slot_utilisation"],
                       "decode_steps_per_call": stats["decode_steps"] // repeats}}
    if hbm_gbps:
        itemsize = np.dtype(dtype if dtype != "bfloat16" else np.float16).itemsize
        cache_bytes = 2 * config.num_hidden_layers * prompts * group * (prompt_len + new_tokens // 2) \
            * config.num_key_value_heads * config.head_dim * itemsize  # live entries read by an average step
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
                                  "torch_threads": torch.get_num_threads(),
                                  "version": __import__("transformers").__version__}
        result["speedup_tokens_per_s"] = round(hf_seconds / seconds, 2)
    return result


def mixed_lengths(n: int, cap: int, tail: float, short: tuple[int, int], seed: int) -> np.ndarray:
    """Predetermined reply lengths: a `tail` fraction at the cap, the rest uniform in `short` (inclusive)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(short[0], short[1] + 1, n)
    lengths[rng.random(n) < tail] = cap
    return lengths.astype(np.int32)


def static_utilisation(lengths: np.ndarray, rows: int) -> float:
    """Useful tokens / (rows x steps) of static batches of `rows` consecutive samples, each run to its longest."""
    steps = sum(int(lengths[i:i + rows].max()) for i in range(0, len(lengths), rows))
    return float(lengths.sum() / (rows * steps))


def lengthmix(preset="0.5b", prompts=16, group=8, prompt_len=64, new_tokens=128, dtype="float32", layers=2,
              compare=True, seed=0, slots=16, chunk_steps=16, tail=0.04, short=(4, 32)) -> dict:
    import jax

    from tooln1_jax.rollout import engine, inference, sampling

    model, config, params, prompt_ids = _models_and_prompts(preset, layers, seed, dtype, prompts, prompt_len)
    lengths = mixed_lengths(prompts * group, new_tokens, tail, short, seed)

    def ours():
        return engine.run(config, params, prompt_ids, num_samples=group, limits=lengths,
                          sampling=sampling.Sampling(1.0), stop_ids=(), rng=jax.random.key(seed),
                          mesh=inference.mesh_of(params), sample_ids=np.arange(len(lengths), dtype=np.uint32),
                          num_slots=slots, chunk_steps=chunk_steps)

    start = time.perf_counter()
    out = ours()
    first = time.perf_counter() - start
    assert (out.lengths == lengths).all()
    start = time.perf_counter()
    stats = ours().stats
    seconds = time.perf_counter() - start
    useful = int(lengths.sum())
    result = {"benchmark": "rollout", "mode": "lengthmix", "preset": preset, "layers": config.num_hidden_layers,
              "prompts": prompts, "group": group, "prompt_len": prompt_len, "cap": new_tokens, "tail": tail,
              "short": list(short), "slots": slots, "chunk_steps": chunk_steps, "useful_tokens": useful,
              "reply_len_mean": round(float(lengths.mean()), 1), "backend": jax.default_backend(),
              "ours": {"seconds": round(seconds, 3), "first_call_with_compile_seconds": round(first, 2),
                       **_engine_stats(stats, seconds)},
              "static_batch": {"rows": slots, "slot_utilisation": round(static_utilisation(lengths, slots), 4),
                               "one_batch_of_all_samples_utilisation":
                                   round(static_utilisation(lengths, len(lengths)), 4)}}
    if compare:  # transformers runs static batches of `slots` rows, each to its longest reply (its stopping rule)
        import torch

        ids = torch.tensor(np.repeat(np.asarray(prompt_ids), group, axis=0))

        def theirs():
            torch.manual_seed(seed)
            with torch.no_grad():
                for i in range(0, len(lengths), slots):
                    n = int(lengths[i:i + slots].max())
                    model.generate(input_ids=ids[i:i + slots], attention_mask=torch.ones_like(ids[i:i + slots]),
                                   do_sample=True, max_new_tokens=n, min_new_tokens=n, temperature=1.0, top_k=0,
                                   top_p=1.0, eos_token_id=None, pad_token_id=0)

        hf_seconds = _median_seconds(theirs, 1)
        result["transformers"] = {"seconds": round(hf_seconds, 3), "tokens_per_s": round(useful / hf_seconds, 2)}
        result["speedup_tokens_per_s"] = round(hf_seconds / seconds, 2)
    return result


def real(model_path: str, chats: str, group=4, new_tokens=256, temperature=0.7, batch_size=16, seed=0,
         dtype="float32", compare=True) -> dict:
    """`tooln1 generate` end to end against a transformers script on the same file and sampling."""
    import io

    from tooln1_jax import generate
    from tooln1_jax.rollout import engine

    args = argparse.Namespace(model=model_path, messages=chats, tools=None, max_new_tokens=new_tokens,
                              temperature=temperature, top_p=1.0, top_k=0, num_samples=group,
                              batch_size=batch_size, seed=seed, dtype=dtype)
    out, built, start = io.StringIO(), engine.programs_built(), time.perf_counter()
    generate.run(args, out=out)
    seconds = time.perf_counter() - start
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    tokens = sum(r["num_tokens"] for r in rows)
    result = {"benchmark": "rollout", "mode": "real", "model": str(model_path), "chats": str(chats),
              "prompts": len(rows) // group, "group": group, "new_tokens": new_tokens, "temperature": temperature,
              "ours": {"seconds_total": round(seconds, 2), "replies": len(rows), "tokens": tokens,
                       "tokens_per_s": round(tokens / seconds, 2), "compiles": engine.programs_built() - built}}
    if compare:
        import torch
        from pathlib import Path
        from transformers import AutoModelForCausalLM, AutoTokenizer

        start = time.perf_counter()
        path = Path(model_path).expanduser()
        kw = {"gguf_file": path.name} if path.suffix == ".gguf" else {}
        src = str(path.parent) if kw else str(path)
        tokenizer = AutoTokenizer.from_pretrained(src, **kw)
        model = AutoModelForCausalLM.from_pretrained(src, torch_dtype=torch.float32, **kw).eval()
        conversations = generate.read_conversations(chats)
        texts = generate.build_prompts(conversations, tokenizer)
        tokenizer.padding_side = "left"
        stop = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]
        hf_tokens = 0
        torch.manual_seed(seed)
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                enc = tokenizer(texts[i:i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
                gen = model.generate(**enc, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                                     num_return_sequences=group, max_new_tokens=new_tokens, eos_token_id=stop,
                                     pad_token_id=stop[1])[:, enc["input_ids"].shape[1]:]
                for row in gen.tolist():
                    ends = [k for k, t in enumerate(row) if t in stop]
                    hf_tokens += ends[0] + 1 if ends else len(row)
        hf_seconds = time.perf_counter() - start
        result["transformers"] = {"seconds_total": round(hf_seconds, 2), "tokens": hf_tokens,
                                  "tokens_per_s": round(hf_tokens / hf_seconds, 2)}
        result["speedup_tokens_per_s"] = round(result["ours"]["tokens_per_s"] / result["transformers"]["tokens_per_s"],
                                               2)
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", default="uniform", choices=["uniform", "lengthmix", "real"])
    parser.add_argument("--preset", default="0.5b")
    parser.add_argument("--layers", type=int, default=None, help="override the layer count (quick runs)")
    parser.add_argument("--prompts", type=int, default=None, help="uniform 4, lengthmix 16")
    parser.add_argument("--group", type=int, default=None, help="samples per prompt: uniform 8, lengthmix 8, real 4")
    parser.add_argument("--prompt-len", type=int, default=None, help="uniform 256, lengthmix 64")
    parser.add_argument("--new-tokens", type=int, default=None, help="uniform 64; the cap: lengthmix 128, real 256")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--slots", type=int, default=None, help="decode slots (lengthmix default 16)")
    parser.add_argument("--chunk-steps", type=int, default=16)
    parser.add_argument("--tail", type=float, default=0.04, help="lengthmix: fraction of replies at the cap")
    parser.add_argument("--model", help="real: model path (HF dir or .gguf)")
    parser.add_argument("--chats", help="real: chats JSONL")
    parser.add_argument("--temperature", type=float, default=0.7, help="real mode")
    parser.add_argument("--no-compare", action="store_true", help="skip the transformers side")
    parser.add_argument("--hbm-gbps", type=float, default=None,
                        help="memory bandwidth for the decode-step bound (H100 SXM ~3350, H200 ~4800)")
    args = parser.parse_args(argv)
    pick = lambda value, default: default if value is None else value  # noqa: E731
    if args.mode == "uniform":
        result = run(args.preset, pick(args.prompts, 4), pick(args.group, 8), pick(args.prompt_len, 256),
                     pick(args.new_tokens, 64), args.repeats, args.dtype, args.layers, not args.no_compare,
                     args.hbm_gbps, slots=args.slots, chunk_steps=args.chunk_steps)
    elif args.mode == "lengthmix":
        result = lengthmix(args.preset, pick(args.prompts, 16), pick(args.group, 8), pick(args.prompt_len, 64),
                           pick(args.new_tokens, 128), args.dtype, pick(args.layers, 2), not args.no_compare,
                           slots=pick(args.slots, 16), chunk_steps=args.chunk_steps, tail=args.tail)
    else:
        if not args.model or not args.chats:
            parser.error("--mode real needs --model and --chats")
        result = real(args.model, args.chats, pick(args.group, 4), pick(args.new_tokens, 256), args.temperature,
                      dtype=args.dtype, compare=not args.no_compare)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
