"""Benchmark: one GPU or TPU chip end to end, in one command; JSON on stdout (and `--json`), a summary table last.

    python -m tooln1_jax.bench.device [--tiny] [--json OUT] [--budget-s 400]

Sections (random weights; medians of `--repeats` after one warm-up that includes compilation):
- matmul: bf16 and f32 square matmul TFLOP/s (the peaks MFU is measured against); memory: GB/s of an
  elementwise read + write of a large array.
- rollout: `sampler.generate` tokens/s at the 0.5B and 1.5B shapes (bf16); the decode step (from N and 2N new
  tokens) against its bandwidth floor (weight bytes + live KV-cache bytes read per step / measured GB/s); prompt
  tokens/s of the prefill (timed with one new token, so a lower bound: the first decode chunk is included).
- transformers: `generate` of the same shape and sampling on the same device, and our tokens/s over theirs;
  skipped with the reason when torch has no such device.
- train: the packed GRPO update (AdamW, remat full) per shape and attention kernel: MFU = model FLOPs (6 x matmul
  params x positions, the head at reply slots, 12 x heads x head_dim x visible key pairs per layer) / time /
  measured matmul peak of the compute dtype. Refused kernels are reported with the reason.
- logits: the packed log-prob pass with model.dtype bfloat16 against float32 (same weights): time and |logp| gap.
On a CPU (or with --tiny) every section runs on a tiny shape, so the whole command finishes in about a minute.
Sections past `--budget-s` seconds are skipped (reported as such) so the run ends within its time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np

from tooln1_jax import accelerator

ACCELERATOR_SHAPES = ("0.5b", "1.5b")


def plan(tiny: bool) -> dict:
    """Sizes of every section: accelerator-sized, or tiny (CPU, tests)."""
    if tiny:
        return {"shapes": {"tiny": None}, "dtype": "float32", "matmul_n": 256, "memory_mib": 16, "repeats": 2,
                "prompts": 2, "group": 2, "prompt_len": 16, "new_tokens": 128, "train_groups": 4,
                "train_prompt_len": 24, "train_reply_len": 12, "pack_tokens": 256}
    return {"shapes": {name: name for name in ACCELERATOR_SHAPES}, "dtype": "bfloat16", "matmul_n": 8192,
            "memory_mib": 2048, "repeats": 3, "prompts": 4, "group": 8, "prompt_len": 256, "new_tokens": 64,
            "train_groups": 8, "train_prompt_len": 512, "train_reply_len": 96, "pack_tokens": 8192}


def model_config(shape: str | None, **runtime):
    """A preset's shape, or (None) a tiny one."""
    from tooln1_jax.models import presets
    from tooln1_jax.models.qwen2 import Qwen2Config

    if shape is not None:
        return presets.preset(shape, **runtime)
    return Qwen2Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, **runtime)


def _times(fn, repeats: int) -> list[float]:
    """Seconds of `repeats` calls after one warm-up; `fn` must block until its work is done."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _median(fn, repeats: int) -> float:
    return statistics.median(_times(fn, repeats))


# ---- chip peaks ----------------------------------------------------------------------------------------------
def matmul_tflops(n: int, dtype: str, repeats: int) -> float:
    import jax
    import jax.numpy as jnp

    a, b = (jax.random.normal(k, (n, n), jnp.float32).astype(dtype) for k in jax.random.split(jax.random.key(0)))
    matmul = jax.jit(lambda a, b: a @ b)
    calls = 10
    seconds = _median(lambda: jax.block_until_ready([matmul(a, b) for _ in range(calls)]), repeats) / calls
    return 2 * n ** 3 / seconds / 1e12


def memory_gbps(mib: int, repeats: int) -> float:
    import jax
    import jax.numpy as jnp

    step = jax.jit(lambda x: x * 1.0001 + 1.0, donate_argnums=0)  # reads and writes every byte once, in place
    state = {"x": jnp.ones((mib * 2 ** 20 // 4,), jnp.float32)}
    calls = 10

    def run():
        for _ in range(calls):
            state["x"] = step(state["x"])
        jax.block_until_ready(state["x"])

    seconds = _median(run, repeats) / calls
    return 2 * state["x"].nbytes / seconds / 1e9


# ---- rollout ---------------------------------------------------------------------------------------------------
def decode_floor_seconds(config, rows: int, context: int, itemsize: int, gbps: float) -> float:
    """Bandwidth floor of one decode step: every weight and the KV cache of `context` live tokens per row read
    once."""
    kv_bytes = 2 * config.num_hidden_layers * rows * context * config.num_key_value_heads * config.head_dim * itemsize
    return (config.num_params * itemsize + kv_bytes) / (gbps * 1e9)


def rollout(config, p: dict, gbps: float) -> dict:
    import jax

    from tooln1_jax.models import qwen2
    from tooln1_jax.rollout import inference, sampler

    weights = inference.prepare(config, qwen2.init_params(config, jax.random.key(0)))
    prompts = np.random.default_rng(0).integers(0, config.vocab_size, (p["prompts"], p["prompt_len"])).tolist()
    rows, n = p["prompts"] * p["group"], p["new_tokens"]

    def generate(new_tokens):
        out = sampler.generate(config, weights, prompts, num_samples=p["group"], max_new_tokens=new_tokens,
                               temperature=1.0, stop_ids=(), rng=jax.random.key(0))
        assert (out.lengths == new_tokens).all()

    times = _times(lambda: generate(n), p["repeats"])
    seconds = statistics.median(times)
    # a difference of two timings: the fastest of each, as noise only adds time
    step = (min(_times(lambda: generate(2 * n), p["repeats"])) - min(times)) / n
    prefill = _median(lambda: generate(1), p["repeats"])
    floor = decode_floor_seconds(config, rows, p["prompt_len"] + n // 2, np.dtype(config.dtype).itemsize, gbps)
    return {"rows": rows, "prompt_len": p["prompt_len"], "new_tokens": n, "dtype": config.dtype,
            "params": config.num_params, "seconds": round(seconds, 4), "tokens_per_s": round(rows * n / seconds, 1),
            "decode_step_s": round(step, 6), "decode_floor_s": round(floor, 6),
            "decode_step_over_floor": round(step / floor, 2),
            "prefill_prompt_tokens_per_s": round(p["prompts"] * p["prompt_len"] / prefill, 1)}


def transformers_generate(config, p: dict, backend: str) -> dict:
    """transformers' generate on the torch device matching the jax backend (same shape, rows and sampling)."""
    import torch
    import transformers

    device = {"gpu": "cuda", "cpu": "cpu"}.get(backend)
    if device is None or (device == "cuda" and not torch.cuda.is_available()):
        return {"skipped": f"torch {torch.__version__} has no device for the jax backend {backend!r}"}
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[config.dtype]
    torch.manual_seed(0)
    hf = transformers.AutoConfig.for_model(**config.to_hf())  # Qwen2 or Qwen3
    model = transformers.AutoModelForCausalLM.from_config(hf).to(device, dtype).eval()
    ids = torch.randint(0, config.vocab_size, (p["prompts"], p["prompt_len"]), device=device)
    rows, n = p["prompts"] * p["group"], p["new_tokens"]

    def generate():
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                 num_return_sequences=p["group"], max_new_tokens=n, min_new_tokens=n,
                                 temperature=1.0, top_k=0, top_p=1.0, eos_token_id=None, pad_token_id=0)
        assert out.shape == (rows, p["prompt_len"] + n)
        if device == "cuda":
            torch.cuda.synchronize()

    seconds = _median(generate, p["repeats"])
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"device": device, "seconds": round(seconds, 4), "tokens_per_s": round(rows * n / seconds, 1),
            "version": transformers.__version__}


# ---- training --------------------------------------------------------------------------------------------------
def packed_batch(config, p: dict, seed: int = 0):
    """A packed GRPO mini-batch of random groups: (arrays, PackedGroups)."""
    from tooln1_jax.train import packing
    from tooln1_jax.train.step import PACKED_KEYS

    rng = np.random.default_rng(seed)
    length = lambda n: int(rng.integers(n // 2, n + 1))  # noqa: E731
    prompts = [rng.integers(1, config.vocab_size, length(p["train_prompt_len"])).tolist()
               for _ in range(p["train_groups"])]
    replies = [[rng.integers(1, config.vocab_size, length(p["train_reply_len"])).tolist() for _ in range(p["group"])]
               for _ in prompts]
    packed = packing.pack_groups(prompts, replies, budget=p["pack_tokens"])
    n, width = packed.num_samples, packed.targets.shape[2]
    batch = {k: getattr(packed, k) for k in (*PACKED_KEYS, "response_mask")}
    batch.update({"advantages": packed.per_slot(rng.normal(size=n).astype(np.float32)),
                  "old_logp": packed.per_slot(-rng.uniform(0.5, 5, (n, width)).astype(np.float32)),
                  "ref_logp": packed.per_slot(-rng.uniform(0.5, 5, (n, width)).astype(np.float32))})
    return batch, packed


def update_flops(config, packed) -> float:
    """Model FLOPs of one forward + backward on a packed batch (no recomputation counted)."""
    e, d, layers = config.hidden_size, config.head_dim, config.num_hidden_layers
    h, kv, f = config.num_attention_heads, config.num_key_value_heads, config.intermediate_size
    layer_params = e * (h + 2 * kv) * d + h * d * e + 3 * e * f
    real = packed.segment_ids > 0
    # a token at position t sees t + 1 keys: its prompt's and its own reply's earlier tokens (train/packing.py)
    visible_pairs = float((packed.positions[real] + 1).sum())
    head_positions = float(packed.response_mask.size)  # log-probs are computed at every reply slot
    return (6 * layers * layer_params * packed.tokens.size + 6 * config.vocab_size * e * head_positions
            + 12 * layers * h * d * visible_pairs)


def _steps(config, mesh, params):
    import optax

    from tooln1_jax.train.step import StepFunctions

    return StepFunctions(config, optax.adamw(1e-6), mesh, params)


def train_update(config, p: dict, peak_tflops: float) -> dict:
    import jax

    from tooln1_jax import parallel
    from tooln1_jax.config import GRPOConfig
    from tooln1_jax.models import qwen2
    from tooln1_jax.train.step import GRPOSettings

    mesh = parallel.single_device_mesh()
    params = jax.device_put(qwen2.init_params(config, jax.random.key(0)),
                            parallel.shardings(*qwen2.abstract_params(config), mesh))
    batch, packed = packed_batch(config, p)
    steps = _steps(config, mesh, params)
    settings = GRPOSettings(temperature=1.0, max_len=packed.targets.shape[2], micro_batch_size=packed.tokens.shape[0],
                            grpo=GRPOConfig(beta=1e-3))
    batch = {k: jax.device_put(v, parallel.batch_sharding(mesh, v.ndim)) for k, v in batch.items()}
    state = {"params": params, "opt": steps.init_opt_state(params)}

    def update():  # parameters are donated: each call continues from the last
        state["params"], state["opt"], metrics = steps.grpo_update_packed(state["params"], state["opt"], batch,
                                                                          settings)
        jax.block_until_ready(metrics)

    seconds = _median(update, p["repeats"])
    flops = update_flops(config, packed)
    return {"rows": packed.tokens.shape[0], "row_length": packed.tokens.shape[1],
            "useful_tokens": packed.useful_tokens, "seconds": round(seconds, 4),
            "model_tflops_per_s": round(flops / seconds / 1e12, 4),
            "mfu": round(flops / seconds / 1e12 / peak_tflops, 4)}


def logits_dtypes(shape, p: dict) -> dict:
    """The packed log-prob pass in bfloat16 against float32 compute, float32 weights shared."""
    import jax

    from tooln1_jax import parallel
    from tooln1_jax.models import qwen2
    from tooln1_jax.train.step import PACKED_KEYS

    mesh = parallel.single_device_mesh()
    base = model_config(shape, dtype="float32", param_dtype="float32")
    params = jax.device_put(qwen2.init_params(base, jax.random.key(0)),
                            parallel.shardings(*qwen2.abstract_params(base), mesh))
    batch, packed = packed_batch(base, p)
    batch = {k: batch[k] for k in PACKED_KEYS}
    out, seconds = {}, {}
    for dtype in ("float32", "bfloat16"):
        steps = _steps(base.replace(dtype=dtype), mesh, params)
        run = lambda: jax.block_until_ready(  # noqa: E731
            steps.packed_logprobs(params, batch, micro_rows=packed.tokens.shape[0]))
        seconds[dtype] = _median(run, p["repeats"])
        out[dtype] = np.asarray(run()[0])
    gap = np.abs(out["bfloat16"] - out["float32"])[packed.response_mask > 0]
    return {"float32_s": round(seconds["float32"], 4), "bfloat16_s": round(seconds["bfloat16"], 4),
            "speedup": round(seconds["float32"] / seconds["bfloat16"], 2),
            "max_abs_logp_gap": round(float(gap.max()), 5), "mean_abs_logp_gap": round(float(gap.mean()), 5)}


# ---- the run ---------------------------------------------------------------------------------------------------
class _Clock:
    """Runs sections while the time budget lasts; a failing section is recorded, not fatal."""

    def __init__(self, budget_s: float):
        self.start, self.budget_s = time.perf_counter(), budget_s

    def run(self, fn, *args) -> dict:
        if time.perf_counter() - self.start > self.budget_s:
            return {"skipped": f"time budget of {self.budget_s:g} s spent"}
        start = time.perf_counter()
        try:
            out = fn(*args)
            return {**out, "wall_s": round(time.perf_counter() - start, 1)} if isinstance(out, dict) else out
        except Exception as error:  # noqa: BLE001  one section's failure must not hide the others' numbers
            return {"error": f"{type(error).__name__}: {error}"[:500]}


def run(tiny: bool | None = None, budget_s: float = 400.0) -> dict:
    import jax

    from tooln1_jax.models import attention

    backend = jax.default_backend()
    tiny = backend == "cpu" if tiny is None else tiny
    p = plan(tiny)
    clock = _Clock(budget_s)
    result = {"benchmark": "device", "backend": backend, "device": jax.devices()[0].device_kind, "tiny": tiny,
              "xla_flags": os.environ.get("XLA_FLAGS", ""),
              "mem_fraction": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "")}
    result["matmul_tflops"] = {dtype: clock.run(lambda d=dtype: round(matmul_tflops(p["matmul_n"], d, p["repeats"]), 3))
                               for dtype in ("bfloat16", "float32")}
    result["memory_gbps"] = clock.run(lambda: round(memory_gbps(p["memory_mib"], p["repeats"]), 2))
    gbps = result["memory_gbps"] if isinstance(result["memory_gbps"], float) else None
    peak = result["matmul_tflops"].get(p["dtype"])
    dtypes = {"dtype": p["dtype"], "param_dtype": "float32"}
    result["rollout"], result["transformers"], result["train"] = {}, {}, {}
    for name, shape in p["shapes"].items():
        config = model_config(shape, **dtypes)
        result["rollout"][name] = clock.run(rollout, config, p, gbps) if gbps else {"skipped": "no memory GB/s"}
        theirs = result["transformers"][name] = clock.run(transformers_generate, config, p, backend)
        ours = result["rollout"][name].get("tokens_per_s")
        if ours and "tokens_per_s" in theirs:
            theirs["ours_over_theirs"] = round(ours / theirs["tokens_per_s"], 2)
    for name, shape in p["shapes"].items():
        result["train"][name] = {}
        for kernel in ("blockwise", "xla", "cudnn"):
            if kernel in attention.REFUSED:
                result["train"][name][kernel] = {"skipped": attention.REFUSED[kernel]}
                continue
            config = model_config(shape, attention=kernel, remat="full", **dtypes)
            result["train"][name][kernel] = (clock.run(train_update, config, p, peak) if isinstance(peak, float)
                                             else {"skipped": "no matmul peak"})
    result["logits"] = clock.run(logits_dtypes, next(iter(p["shapes"].values())), p)
    result["seconds"] = round(time.perf_counter() - clock.start, 1)
    return result


def summary(result: dict) -> str:
    """A plain-text table of the headline numbers."""
    def cell(section: dict, key: str):
        return section.get(key, section.get("skipped", section.get("error", "-")))

    lines = [f"device: {result['device']} ({result['backend']}), {result['seconds']} s",
             f"matmul TFLOP/s bf16 {result['matmul_tflops']['bfloat16']}, f32 {result['matmul_tflops']['float32']};"
             f" memory {result['memory_gbps']} GB/s"]
    for name, r in result["rollout"].items():
        lines.append(f"rollout {name}: {cell(r, 'tokens_per_s')} tok/s, "
                     f"step/floor {cell(r, 'decode_step_over_floor')}, "
                     f"prefill {cell(r, 'prefill_prompt_tokens_per_s')} tok/s; transformers "
                     f"{cell(result['transformers'][name], 'tokens_per_s')} tok/s, ours/theirs "
                     f"{cell(result['transformers'][name], 'ours_over_theirs')}")
    for name, kernels in result["train"].items():
        lines.append(f"train {name} MFU: " + ", ".join(f"{k} {str(cell(v, 'mfu'))[:60]}" for k, v in kernels.items()))
    lg = result["logits"]
    lines.append(f"logits bf16 vs f32: speedup {cell(lg, 'speedup')}, max |logp gap| {cell(lg, 'max_abs_logp_gap')}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (automatic on a CPU)")
    parser.add_argument("--json", help="also write the JSON here")
    parser.add_argument("--budget-s", type=float, default=400.0, help="skip sections that would start after this")
    args = parser.parse_args(argv)
    # before jax starts: the project's accelerator settings; grow-as-needed memory so torch can share the device
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    accelerator.configure()
    result = run(True if args.tiny else None, args.budget_s)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(summary(result))
    return result


if __name__ == "__main__":
    main()
