"""Evaluate on BFCL / ACEBench / API-Bank: build prompts, generate, parse, score, aggregate, write the results.

Two ways in, one scoring path:
- `evaluate(benchmark, model_or_replies_fn, ...)`: prompts are rendered with the Tool-N1 system prompt
  (`tooln1_jax.data.prompts.render`), replies come from a model (greedy, batched) or any `replies_fn(prompts)`.
- `score_predictions(benchmark, path, ...)`: replies produced anywhere, one JSON object per line with `id` and
  `reply`; bad lines, unknown, duplicate and missing ids are reported, never fatal.
Scoring and aggregation import no jax; only the model path does (lazily, in `model_replies_fn`).

Reading a reply: the `<tool_call>` block that counts is the last (`toolcall.BLOCK`, the training reward's rule);
`block="first"` reads the first. With the default prompt a reply is parsed as the training reward parses it
(`toolcall.parse_reply`); with `prompt="tooln1-bfcl"` (BFCL only) as the release's BFCL handler decoded it
(`bfcl_handler_decode`). Replies are capped at `MAX_NEW_TOKENS` of the benchmark unless `max_new_tokens` is given.

Outputs (`write_outputs`): `results.jsonl` (id, benchmark, category, reply, calls, status, valid, reason; API-Bank
rows also `exact`; `calls` are the decoded `{"name", "arguments"}` records, or under tooln1-bfcl the handler's
`{name: arguments}`), `summary.json` ({benchmark: summary} plus the predictions problems) and `summary.md`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tooln1_jax import files, logs, paths
from tooln1_jax.eval import bfcl_handler_decode, datasets, report
from tooln1_jax.eval.checkers import acebench, apibank, bfcl
from tooln1_jax.eval.checkers.common import Verdict, calls_from_records
from tooln1_jax.eval.datasets import Example
from tooln1_jax.rewards import toolcall

PROMPTS = ("tooln1", "tooln1-bfcl")  # the training prompt; the release's BFCL handler prompt (BFCL only)
# The reply cap (new tokens) by default: BFCL's own generation asks for min(4096, context left); 512 elsewhere.
MAX_NEW_TOKENS = {"bfcl": 4096, "acebench": 512, "apibank": 512}
ACEBENCH_ATOM = tuple(c for c in acebench.CATEGORIES if c.startswith("atom_"))
ACEBENCH_SINGLE_TURN = tuple(c for c in acebench.CATEGORIES if c.startswith("single_turn_"))

RepliesFn = Callable[[list[str]], list[str]]


@dataclass
class Evaluation:
    """Scored rows (one per example), the summary per benchmark, and what was wrong with a predictions file."""

    rows: list[dict]
    summaries: dict[str, dict]
    problems: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ scoring

def check(example: Example, calls: list[dict] | None) -> Verdict:
    """The benchmark's verdict on decoded calls in the benchmarks' `[{name: {arg: value}}]` form."""
    if example.benchmark == "bfcl":
        return bfcl.check(example.tools, calls, example.ground_truth, example.category)
    if example.benchmark == "acebench":
        return acebench.check(example.tools, calls, example.ground_truth, example.category)
    if example.benchmark == "apibank":
        return apibank.check(example.tools, calls, example.ground_truth)
    raise ValueError(f"unknown benchmark {example.benchmark!r}")


def score_reply(example: Example, reply: str, block: str | None = None, prompt: str = "tooln1") -> dict:
    """One results row: the reply read (the `<tool_call>` block that counts, or `block`) and checked; under
    `prompt="tooln1-bfcl"` read as the release's BFCL handler read it."""
    _check_prompt(prompt, [example.benchmark])
    if prompt == "tooln1-bfcl":
        decoded = bfcl_handler_decode.decode(reply, block or toolcall.BLOCK)
        shown, calls, status = decoded.calls, decoded.calls, decoded.status
    else:
        parsed = toolcall.parse_reply(reply, block or toolcall.BLOCK)
        shown, calls, status = parsed.calls, calls_from_records(parsed.calls), parsed.status
    verdict = check(example, calls)
    reason = verdict.reason if verdict.valid or status == toolcall.OK else f"{status}: {verdict.reason}"
    row = {"id": example.id, "benchmark": example.benchmark, "category": example.category, "reply": reply,
           "calls": shown, "status": status, "valid": verdict.valid, "reason": reason}
    if example.benchmark == "apibank":
        row["exact"] = apibank.check(example.tools, calls, example.ground_truth, exact=True).valid
    return row


def score(examples: Sequence[Example], replies: Sequence[str], block: str | None = None,
          prompt: str = "tooln1") -> list[dict]:
    if len(examples) != len(replies):
        raise ValueError(f"{len(examples)} examples but {len(replies)} replies")
    return [score_reply(e, r, block, prompt) for e, r in zip(examples, replies)]


def _benchmarks(benchmark: str) -> list[str]:
    """The benchmarks a run covers: `benchmark`, or every one for "all"."""
    return list(datasets.BENCHMARKS) if benchmark == "all" else [benchmark]


def _check_prompt(prompt: str, benchmark_names) -> None:
    if prompt not in PROMPTS:
        raise ValueError(f"prompt {prompt!r}: expected one of {', '.join(PROMPTS)}")
    others = sorted(set(benchmark_names) - {"bfcl"})
    if prompt == "tooln1-bfcl" and others:
        raise ValueError(f"--prompt tooln1-bfcl is the release's BFCL handler prompt: BFCL only "
                         f"(got {', '.join(others)})")


# ------------------------------------------------------------------------------------------------ aggregation

def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(benchmark: str, rows: Sequence[dict]) -> dict:
    """Per-category accuracy and the paper's aggregates (fractions in [0, 1]; None where nothing was scored).

    BFCL: non_live = plain mean of the simple, multiple, parallel, parallel_multiple accuracies; live = accuracy
    over all examples of the four live AST categories; overall = mean of the two (as Tool-N1 reports); the
    relevance categories are reported on their own. ACEBench: unweighted means over categories, as ACEBench's
    own tables: atom (6 categories), single_turn (2), summary over the paper's subset (atom + single_turn) and
    normal over every category scored. API-Bank: accuracy over the calls, and the strict exact-match accuracy.
    `partial` lists the aggregates computed without some of their categories (a --categories subset).
    """
    categories = _category_stats(benchmark, rows)
    aggregates, parts = {"bfcl": _bfcl_aggregates, "acebench": _acebench_aggregates,
                         "apibank": _apibank_aggregates}[benchmark](categories)
    partial = sorted(name for name, needed in parts.items() if any(c not in categories for c in needed))
    return {"benchmark": benchmark, "n": sum(s["n"] for s in categories.values()), "categories": categories,
            "aggregates": aggregates, "partial": partial}


def _category_stats(benchmark: str, rows: Sequence[dict]) -> dict[str, dict]:
    """{category: {n, correct, accuracy[, exact_correct, exact_accuracy]}} in the benchmark's category order."""
    stats: dict[str, dict] = {}
    for row in rows:
        s = stats.setdefault(row["category"], {"n": 0, "correct": 0})
        s["n"] += 1
        s["correct"] += bool(row["valid"])
        if "exact" in row:
            s["exact_correct"] = s.get("exact_correct", 0) + bool(row["exact"])
    for s in stats.values():
        s["accuracy"] = s["correct"] / s["n"]
        if "exact_correct" in s:
            s["exact_accuracy"] = s["exact_correct"] / s["n"]
    order = datasets.categories_of(benchmark)
    return {c: stats[c] for c in sorted(stats, key=order.index)}


def _accuracies(categories: dict[str, dict], names: Sequence[str]) -> list[float]:
    return [categories[c]["accuracy"] for c in names if c in categories]


def _bfcl_aggregates(categories):
    non_live = _mean(_accuracies(categories, bfcl.NON_LIVE))
    live_stats = [categories[c] for c in bfcl.LIVE if c in categories]
    live = sum(s["correct"] for s in live_stats) / sum(s["n"] for s in live_stats) if live_stats else None
    overall = (non_live + live) / 2 if non_live is not None and live is not None else None
    return ({"non_live": non_live, "live": live, "overall": overall},
            {"non_live": bfcl.NON_LIVE, "live": bfcl.LIVE, "overall": bfcl.AST_CATEGORIES})


def _acebench_aggregates(categories):
    parts = {"atom": ACEBENCH_ATOM, "single_turn": ACEBENCH_SINGLE_TURN, "summary": acebench.PAPER_SUBSET,
             "normal": acebench.CATEGORIES}
    return {name: _mean(_accuracies(categories, names)) for name, names in parts.items()}, parts


def _apibank_aggregates(categories):
    n = sum(s["n"] for s in categories.values())
    correct = sum(s["correct"] for s in categories.values())
    exact = sum(s.get("exact_correct", 0) for s in categories.values())
    return {"accuracy": correct / n if n else None, "exact_accuracy": exact / n if n else None}, {}


# ------------------------------------------------------------------------------------------------ model path

def build_prompts(examples: Sequence[Example], tokenizer, native_tools: bool = False,
                  prompt: str = "tooln1") -> list[str]:
    from tooln1_jax.data import prompts

    _check_prompt(prompt, {e.benchmark for e in examples})
    if prompt == "tooln1-bfcl":
        from tooln1_jax.eval import bfcl_handler_prompt

        if native_tools:
            raise ValueError("--prompt tooln1-bfcl is the release's BFCL handler prompt: without --native-tools")
        return [bfcl_handler_prompt.render(e.tools, e.messages) for e in examples]
    return [prompts.render(e.record(), tokenizer, native_tools) for e in examples]


def model_replies_fn(config, params, tokenizer, *, max_new_tokens: int = 512, batch_size: int = 16) -> RepliesFn:
    """Greedy replies from the project's sampler, `batch_size` prompts at a time, with a progress bar."""
    from tooln1_jax.rollout import sampler

    stop_ids = (tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    params = sampler.prepare(config, params)  # the decode layout, made once for every batch

    def replies(prompts: list[str]) -> list[str]:
        ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths share a batch
        out: list[str | None] = [None] * len(ids)
        with logs.progress(len(ids), "generate", "prompt") as bar:
            for start in range(0, len(order), batch_size):
                batch = order[start:start + batch_size]
                rollout = sampler.generate(config, params, [ids[i] for i in batch], num_samples=1,
                                           max_new_tokens=max_new_tokens, temperature=0.0, stop_ids=stop_ids)
                texts = tokenizer.batch_decode(sampler.reply_ids(rollout, stop_ids), skip_special_tokens=False)
                for i, text in zip(batch, texts):
                    out[i] = text
                bar.update(len(batch))
        return out

    return replies


def evaluate(benchmark: str, model: str | os.PathLike | RepliesFn, *, categories: list[str] | None = None,
             limit: int | None = None, block: str | None = None, native_tools: bool = False,
             tokenizer=None, max_new_tokens: int | None = None, batch_size: int = 16, dtype: str | None = None,
             mesh: str | None = None, prompt: str = "tooln1", out: str | os.PathLike | None = None) -> Evaluation:
    """Generate and score. `model`: a model path (HF dir, .gguf, run or checkpoint dir), or a function taking
    the prompt texts and returning the replies. `max_new_tokens`: the reply cap (default: the benchmark's,
    `MAX_NEW_TOKENS`). `mesh` (e.g. "fsdp=8"): shard the model over that device mesh (default: one device).
    With `out`, the results are written there too."""
    from tooln1_jax import assets

    selected = {name: load_examples(name, categories, limit, within=benchmark) for name in _benchmarks(benchmark)}
    from_path = isinstance(model, (str, os.PathLike))
    if tokenizer is None:
        tokenizer = assets.load_tokenizer(model if from_path else None)
    if from_path:
        from tooln1_jax import checkpoint, parallel  # HF dir, .gguf, hub id, run or checkpoint directory
        from tooln1_jax.rollout import sampler

        config, params = checkpoint.load_model(model, mesh=parallel.make_mesh(mesh) if mesh else None, dtype=dtype)
        params = sampler.prepare(config, params)  # the decode layout, made once for every benchmark
    rows, summaries = [], {}
    for name, examples in selected.items():
        if not examples:
            continue
        replies_fn = model_replies_fn(config, params, tokenizer, max_new_tokens=max_new_tokens or MAX_NEW_TOKENS[name],
                                      batch_size=batch_size) if from_path else model
        replies = replies_fn(build_prompts(examples, tokenizer, native_tools, prompt))
        bench_rows = score(examples, replies, block, prompt)
        rows += bench_rows
        summaries[name] = summarize(name, bench_rows)
    evaluation = Evaluation(rows, summaries)
    if out is not None:
        write_outputs(evaluation, out)
    return evaluation


def load_examples(benchmark: str, categories: list[str] | None = None, limit: int | None = None, *,
                  within: str | None = None) -> list[Example]:
    """The examples a run scores: `benchmark` ("all": the three in turn), the named categories (none named: all;
    under "all" each benchmark takes those it has, and one that has none is skipped), at most `limit` each."""
    if benchmark == "all":
        known = {c for name in datasets.BENCHMARKS for c in datasets.categories_of(name)}
        unknown = [c for c in categories or () if c not in known]
        if unknown:
            raise ValueError(f"unknown categories {unknown}; known: {', '.join(sorted(known))}")
        return [e for name in datasets.BENCHMARKS for e in load_examples(name, categories, limit, within="all")]
    if categories and within == "all":
        categories = [c for c in categories if c in datasets.categories_of(benchmark)]
        if not categories:
            return []
    return datasets.load(benchmark, categories, limit)


# ------------------------------------------------------------------------------------------------ predictions

def read_predictions(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, list]]:
    """{id: reply} from a JSONL file, and the problems: bad lines (with their numbers) and duplicate ids.

    A line that is not UTF-8, not a JSON object with a string `id` and a string `reply`, or whose strings are not
    valid Unicode (a lone surrogate escape), is reported and skipped; of duplicate ids the first line wins and the
    others are reported. A path that is not a readable file is an error naming it.
    """
    replies: dict[str, str] = {}
    first_line: dict[str, int] = {}
    bad_lines, duplicates = [], []
    if Path(path).is_dir():
        raise ValueError(f"{path}: is a directory; --predictions takes a JSONL file (one object per line)")
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            prediction = _prediction(raw)
            if isinstance(prediction, str):
                bad_lines.append({"line": number, "error": prediction})
            elif prediction:
                key, reply = prediction
                if key in replies:
                    duplicates.append({"line": number, "id": key, "first_line": first_line[key]})
                else:
                    replies[key] = reply
                    first_line[key] = number
    return replies, {"file": str(path), "bad_lines": bad_lines, "duplicate_ids": duplicates}


def _prediction(raw: bytes) -> tuple[str, str] | str | None:
    """(id, reply) of one line of a predictions file; None for a blank line; else what is wrong with the line."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"not UTF-8 (byte {e.start + 1} of the line)"
    if not line.strip():
        return None
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        return f"not JSON ({e.msg})"
    except RecursionError:
        return "not JSON (nested too deeply)"
    if not isinstance(row, dict):
        return f"not a JSON object ({type(row).__name__})"
    if not isinstance(row.get("id"), str) or not row["id"]:
        return "no string 'id'"
    if not isinstance(row.get("reply"), str):
        return f"id {row['id']!r}: no string 'reply'"
    try:
        (row["id"] + row["reply"]).encode("utf-8")
    except UnicodeEncodeError:
        return "id or reply is not valid Unicode (a lone surrogate)"
    return row["id"], row["reply"]


def score_predictions(benchmark: str, path: str | os.PathLike, *, categories: list[str] | None = None,
                      limit: int | None = None, block: str | None = None, prompt: str = "tooln1",
                      out: str | os.PathLike | None = None) -> Evaluation:
    """Score a predictions file (replies to `prompt`'s prompts: "tooln1-bfcl" reads them as the release's BFCL
    handler did). Categories without any prediction are left out (and listed); a missing id in a scored category
    counts as wrong (reason "missing prediction"); ids of no example are listed as unknown."""
    _check_prompt(prompt, _benchmarks(benchmark))
    replies, problems = read_predictions(path)
    known_ids: set[str] = set()
    rows, summaries, missing, unscored = [], {}, [], []
    for name in _benchmarks(benchmark):
        examples = load_examples(name, categories, limit, within=benchmark)
        known_ids.update(e.id for e in datasets.load(name))
        covered = {e.category for e in examples if e.id in replies}
        unscored += [f"{name}/{c}" for c in dict.fromkeys(e.category for e in examples) if c not in covered]
        scored = [e for e in examples if e.category in covered]
        missing += [e.id for e in scored if e.id not in replies]
        bench_rows = [score_reply(e, replies[e.id], block, prompt) if e.id in replies else _missing_row(e)
                      for e in scored]
        if bench_rows:
            rows += bench_rows
            summaries[name] = summarize(name, bench_rows)
    problems.update(unknown_ids=sorted(set(replies) - known_ids), missing_ids=missing,
                    categories_without_predictions=unscored)
    evaluation = Evaluation(rows, summaries, problems)
    if out is not None:
        write_outputs(evaluation, out)
    return evaluation


def _missing_row(example: Example) -> dict:
    row = {"id": example.id, "benchmark": example.benchmark, "category": example.category, "reply": None,
           "calls": None, "status": "missing", "valid": False, "reason": "missing prediction"}
    return {**row, "exact": False} if example.benchmark == "apibank" else row


def problems_text(problems: dict[str, Any], limit: int = 20) -> str:
    """The predictions problems, one block per kind, at most `limit` entries each."""
    where = problems.get("file", "predictions")
    lines = [f"{where}: bad line {b['line']}: {b['error']}" for b in problems.get("bad_lines", [])[:limit]]
    lines += [f"{where}: duplicate id {d['id']!r} on line {d['line']} (first on line {d['first_line']}; kept)"
              for d in problems.get("duplicate_ids", [])[:limit]]
    for kind, label in (("unknown_ids", "unknown ids"), ("missing_ids", "missing ids (scored as wrong)"),
                        ("categories_without_predictions", "categories without predictions (not scored)")):
        items = problems.get(kind, [])
        if items:
            shown = ", ".join(items[:limit]) + (f", ... ({len(items)} in all)" if len(items) > limit else "")
            lines.append(f"{label}: {shown}")
    for kind in ("bad_lines", "duplicate_ids"):
        if len(problems.get(kind, [])) > limit:
            lines.append(f"... {len(problems[kind])} {kind.replace('_', ' ')} in all")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ outputs, CLI

def write_outputs(evaluation: Evaluation, out: str | os.PathLike) -> Path:
    """results.jsonl, summary.json and summary.md, each written whole or not at all, strict JSON (NaN -> null)."""
    out = paths.path(out)  # local or gs://
    out.mkdir(parents=True, exist_ok=True)
    # backslashreplace: a lone surrogate in a model's reply becomes its JSON escape \udXXX, still valid JSON
    with files.open_atomic(out / "results.jsonl", errors="backslashreplace") as f:
        for row in evaluation.rows:
            f.write(_row_json(row) + "\n")
    summary = dict(evaluation.summaries)
    if evaluation.problems:
        summary["predictions_problems"] = evaluation.problems
    files.write_text(out / "summary.json", files.strict_json(summary, indent=2) + "\n")
    files.write_text(out / "summary.md", report.markdown(evaluation.summaries) + "\n")
    return out


def _row_json(row: dict) -> str:
    try:
        return files.strict_json(row, ensure_ascii=False)
    except RecursionError:  # decoded calls nested past the recursion limit: the reply text keeps them
        return files.strict_json({**row, "calls": None}, ensure_ascii=False)


def run_cli(args) -> None:
    """`tooln1 eval BENCHMARK (--model PATH | --predictions FILE) --out DIR [...]`: score, write, print the table."""
    categories = [c.strip() for c in args.categories.split(",") if c.strip()] if args.categories else None
    if args.predictions:
        evaluation = score_predictions(args.benchmark, args.predictions, categories=categories, limit=args.limit,
                                       block=args.block, prompt=args.prompt, out=args.out)
    else:
        evaluation = evaluate(args.benchmark, args.model, categories=categories, limit=args.limit,
                              block=args.block, native_tools=args.native_tools,
                              max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, dtype=args.dtype,
                              mesh=args.mesh, prompt=args.prompt, out=args.out)
    issues = problems_text(evaluation.problems)
    if issues:
        print(issues, file=sys.stderr)
    print(report.markdown(evaluation.summaries))
    print(f"\nwrote {paths.path(args.out) / 'results.jsonl'} and summary.json / summary.md")
