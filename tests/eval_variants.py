"""Helpers of the evaluation tests: reply texts, oracles built from the ground truth and many perturbations of them
(the agreement tests compare ours and the official checkers on these), and a tiny random Qwen2 to generate with.

Deterministic: the perturbations are drawn from a `random.Random` seeded by the caller.
"""

from __future__ import annotations

import copy
import json
import random
import re
from typing import Any, Iterator

_MISSING = object()


# ------------------------------------------------------------------------------------------------ reply texts

def reply_with(calls_in_benchmark_form, think="I should call the tools.") -> str:
    records = [{"name": name, "arguments": args} for call in calls_in_benchmark_form for name, args in call.items()]
    return f"<think>{think}</think>\n<tool_call>{json.dumps(records)}</tool_call>"


def oracle_reply(example) -> str:
    """A reply text a perfect model would give to a `datasets.Example`."""
    truth = example.ground_truth
    if example.benchmark == "bfcl":
        if truth is None:  # relevance categories: "no call" for irrelevance, any call for relevance
            if example.category == "live_relevance":
                return reply_with([{example.tools[0]["name"]: {}}])
            return "<think>None of the functions fits.</think><tool_call>[]</tool_call>"
        return reply_with(bfcl_oracle(example.tools, truth))
    if example.benchmark == "acebench":
        return reply_with(acebench_oracle(truth[0] if isinstance(truth, list) else truth))
    return reply_with([{truth["api_name"]: truth["param_dict"]}])


# ------------------------------------------------------------------------------------------------ BFCL

def bfcl_value(accepted: list, required: bool = False, *, first: bool = True) -> Any:
    """A value from a BFCL accepted-values list (nested dict / list-of-dict answers resolved recursively).

    Optional arguments (accepted values include "") are left out unless `required` (the schema requires them).
    """
    if "" in accepted and not required:
        return _MISSING
    values = [v for v in accepted if v != ""]
    if not values:
        return _MISSING
    return _bfcl_resolve(values[0] if first else values[-1])


def _bfcl_resolve(value: Any) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, accepted in value.items():
            v = bfcl_value(accepted) if isinstance(accepted, list) else accepted
            if v is not _MISSING:
                out[key] = v
        return out
    if isinstance(value, list) and value and all(isinstance(x, dict) for x in value):
        return [_bfcl_resolve(x) for x in value]
    return value


def bfcl_oracle(functions: list[dict], ground_truth: list[dict]) -> list[dict]:
    """The reply a perfect model would give: each expected call with the first accepted value of each argument."""
    calls = []
    for answer in ground_truth:
        (name, args), = answer.items()
        schema = next((f for f in functions if f["name"] == name), None)
        required = schema["parameters"].get("required", []) if schema else []
        call = {}
        for param, accepted in args.items():
            v = bfcl_value(accepted, param in required)
            if v is not _MISSING:
                call[param] = v
        calls.append({name: call})
    return calls


def relevance_candidates(functions: list[dict]) -> list[list[dict] | None]:
    out: list[list[dict] | None] = [None, [], [{}]]
    for f in functions[:2]:
        props = f["parameters"].get("properties", {})
        out.append([{f["name"]: {}}])
        out.append([{f["name"]: {p: "x" for p in f["parameters"].get("required", []) if p in props}}])
    return out


def bfcl_candidates(functions: list[dict], ground_truth: list[dict], rng: random.Random) -> Iterator[Any]:
    """Oracle, alternatives, per-argument perturbations and call-level perturbations (some stay valid)."""
    oracle = bfcl_oracle(functions, ground_truth)
    yield oracle
    full = []  # optional arguments included with a value
    last = []  # the last accepted value of each argument
    for answer in ground_truth:
        (name, args), = answer.items()
        full.append({name: {p: v for p, acc in args.items() if (v := bfcl_value(acc, True)) is not _MISSING}})
        last.append({name: {p: v for p, acc in args.items()
                            if (v := bfcl_value(acc, True, first=False)) is not _MISSING}})
    yield full
    yield last
    yield from _call_level_variants(functions, oracle, rng)
    for i, call in enumerate(full):
        (name, args), = call.items()
        schema = next((f for f in functions if f["name"] == name), {"parameters": {}})
        props = schema["parameters"].get("properties", {})
        extra = [p for p in props if p not in args]
        if extra:
            yield _replace_args(full, i, {**args, extra[0]: _default_for(props[extra[0]])})
        yield _replace_args(full, i, {**args, "unexpected_arg": "x"})
        params = list(args)
        rng.shuffle(params)
        for param in params[:4]:
            for new in value_variants(args[param], rng):
                yield _replace_args(full, i, {**args, param: new})
            rest = {p: v for p, v in args.items() if p != param}
            yield _replace_args(full, i, rest)
            others = [p for p in args if p != param]
            if others:
                yield _replace_args(full, i, {**args, param: copy.deepcopy(args[rng.choice(others)])})


def _default_for(schema: dict) -> Any:
    if "default" in schema:
        return schema["default"]
    return {"string": "x", "integer": 1, "float": 1.0, "boolean": True, "array": [], "dict": {}}.get(
        schema.get("type"), "x")


def _replace_args(calls: list[dict], i: int, args: dict) -> list[dict]:
    out = copy.deepcopy(calls)
    name = next(iter(out[i]))
    out[i] = {name: copy.deepcopy(args)}
    return out


def _call_level_variants(functions: list[dict], calls: list[dict], rng: random.Random) -> Iterator[Any]:
    yield None
    yield []
    yield [{}]
    yield [{"name": next(iter(calls[0])), "arguments": next(iter(calls[0].values()))}]  # not BFCL's form
    yield [{next(iter(calls[0])): "not an object"}]
    yield list(reversed(calls))
    yield calls[:-1]
    yield calls + calls[:1]
    shuffled = list(calls)
    rng.shuffle(shuffled)
    yield shuffled
    names = [f["name"] for f in functions]
    for i, call in enumerate(calls[:2]):
        (name, args), = call.items()
        wrong = [n for n in names if n != name]
        for new_name in ([rng.choice(wrong)] if wrong else []) + [name + "_v2", name.replace(".", "_")]:
            out = copy.deepcopy(calls)
            out[i] = {new_name: copy.deepcopy(args)}
            yield out


_RESTYLES = [
    str.upper, str.lower, str.title,
    lambda s: s.replace(" ", "_"), lambda s: s.replace(" ", "-"), lambda s: s.replace(" ", ""),
    lambda s: s + ".", lambda s: s.replace(",", ""), lambda s: " " + s + " ", lambda s: s.replace("'", '"'),
    lambda s: s + " extra", lambda s: "the " + s, lambda s: s[:-1], lambda s: s.replace("e", "3"),
]


def value_variants(value: Any, rng: random.Random) -> list[Any]:
    """Perturbed copies of one argument value: type changes, restyled strings, edited lists / dicts."""
    out: list[Any] = []
    if isinstance(value, bool):
        out += [not value, str(value).lower(), str(value), int(value), [value]]
    elif isinstance(value, int):
        out += [float(value), str(value), value + 1, -value, [value], True]
    elif isinstance(value, float):
        out += [str(value), value + 0.5, [value]]
        if value.is_integer():
            out.append(int(value))
    elif isinstance(value, str):
        out += [rng.choice(_RESTYLES)(value) for _ in range(3)] + [[value], 5, ""]
        if re.fullmatch(r"-?\d+", value):
            out.append(int(value))
        if value.lower() in ("true", "false"):
            out.append(value.lower() == "true")
    elif isinstance(value, list):
        out += [list(reversed(value)), value[:-1], value + value[:1], json.dumps(value), []]
        if value:
            out.append(value[0])
            i = rng.randrange(len(value))
            for new in value_variants(value[i], rng)[:3]:
                out.append(value[:i] + [new] + value[i + 1:])
    elif isinstance(value, dict):
        out += [json.dumps(value), {**value, "extra_key": "x"}, [value]]
        if value:
            key = rng.choice(list(value))
            out.append({k: v for k, v in value.items() if k != key})
            for new in value_variants(value[key], rng)[:3]:
                out.append({**value, key: new})
    elif value is None:
        out += ["None", 0]
    return [copy.deepcopy(v) for v in out]


# ------------------------------------------------------------------------------------------------ ACEBench

_SUFFIX = re.compile(r"_\d+$")


def acebench_oracle(answer: dict) -> list[dict]:
    """The calls one ground-truth alternative describes (repeated functions lose their `_N` suffix)."""
    return [{_SUFFIX.sub("", key): copy.deepcopy(args)} for key, args in answer.items()]


def acebench_candidates(functions: list[dict], ground_truth: dict | list, rng: random.Random) -> Iterator[Any]:
    alternatives = ground_truth if isinstance(ground_truth, list) else [ground_truth]
    for answer in alternatives:
        yield acebench_oracle(answer)
    calls = acebench_oracle(alternatives[0])
    yield from _call_level_variants(functions, calls, rng)
    for i, call in enumerate(calls):
        (name, args), = call.items()
        schema = next((f for f in functions if f["name"] == name), None)
        props = ((schema or {}).get("parameters") or {}).get("properties", {})
        extra = [p for p in props if p not in args]
        if extra:
            yield _replace_args(calls, i, {**args, extra[0]: _default_for(props[extra[0]])})
        yield _replace_args(calls, i, {**args, "unexpected_arg": "x"})
        yield _replace_args(calls, i, {})
        params = list(args)
        rng.shuffle(params)
        for param in params[:4]:
            for new in value_variants(args[param], rng):
                yield _replace_args(calls, i, {**args, param: new})
            yield _replace_args(calls, i, {p: v for p, v in args.items() if p != param})


def python_call_text(calls: list[dict]) -> str:
    """Calls as the Python-syntax reply ACEBench's official decoder reads: "[f(a=1, b='x'), g()]"."""
    return "[" + ", ".join(f"{name}({', '.join(f'{k}={_py_literal(v)}' for k, v in args.items())})"
                           for call in calls for name, args in call.items()) + "]"


def _py_literal(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_py_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_py_literal(k)}: {_py_literal(v)}" for k, v in value.items()) + "}"
    return repr(value)


# Examples whose ground truth, copied into a reply, fails (under the official checker too: the oracle is one of
# the candidates of test_bfcl_official_agreement).
BFCL_GROUND_TRUTH_DEFECTS = {
    "simple_363": "ground truth names 'find_closest'; the offered function is 'restaurant_search.find_closest'",
    "live_simple_106-63-0": "required arguments whose accepted-values list is empty ([])",
    "live_simple_112-68-0": "required arguments whose accepted-values list is empty ([])",
    "live_multiple_507-149-4": "required 'origin_airport' is accepted only when omitted ([''])",
    "live_multiple_862-181-3": "ground truth needs 'journey_start_time', which the function does not have",
    "live_multiple_964-207-0": "ground truth needs 'question'; the function's (required) argument is 'statement'",
}


# Oracle replies that fail without the whitespace removal too: the ground truth itself cannot pass upstream.
ACEBENCH_GROUND_TRUTH_DEFECTS = {
    "normal_single_turn_parallel_function_42":
        "expects event_details=[] for an array: upstream's item type check iterates the expected value, so an "
        "expected empty list never passes",
    "normal_preference_40": "expects strings where the schema declares an array of objects",
}


# ------------------------------------------------------------------------------------------------ tiny model

def make_tiny_qwen(path, seed=0):
    """A random 2-layer Qwen2 with the Qwen2.5 vocabulary, saved with transformers (no tokenizer files)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=151936, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         max_position_embeddings=4096)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():  # non-trivial biases and norms, so the replies depend on them
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.normal_(0.0 if name.endswith("bias") else 1.0, 0.3)
    model.save_pretrained(path)
    return model
