"""`tooln1 chain`: the paper's recipe on real weights, end to end, with the held-out evaluation around it.

    tooln1 chain --model ~/.cache/tooln1/qwen2.5-coder-0.5b-instruct.gguf --out runs/chain

Stages, each writing under --out and skipped when its output is already there (so running the same command again
after a crash or a stop continues: a stopped training stage resumes from its last checkpoint):

1. `eval_base/`: greedy evaluation of the loaded model on the held-out subset (`--eval-categories`, the first
   `--eval-limit` examples of each; BFCL, never used in training: the training records come from the config).
2. `sft/`: the supervised format warm start (`--sft-config`), then `sft_model/`: its weights as a HF directory.
3. `eval_sft/`: the same evaluation of the warm-started model.
4. `grpo/`: GRPO with the binary Tool-N1 reward from the warm-started model (`--grpo-config`; the reference policy
   is the warm-started model).
5. `eval_grpo/`: the same evaluation of the GRPO model.

Each stage runs in a fresh process (nothing one stage held is left for the next; a stage killed for memory stops
the chain with a message saying so). Then `chain.json` (settings, per-stage wall time, the per-category table, the
GRPO reward curve), `chain.md` (the table) and `reward.png`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from tooln1_jax import files, logs

log = logging.getLogger(__name__)

HELD_OUT_CATEGORIES = ("simple", "multiple", "parallel", "parallel_multiple", "live_simple")
DEFAULT_SFT_CONFIG = "configs/qwen2_5_0_5b_cpu_sft.yaml"
DEFAULT_GRPO_CONFIG = "configs/qwen2_5_0_5b_cpu_grpo.yaml"
EVALS = ("base", "sft", "grpo")
STAGES = ("eval_base", "sft", "sft_model", "eval_sft", "grpo", "eval_grpo")


def _write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_text(path, files.strict_json(value, indent=1) + "\n")


def _stage_done(out: Path, name: str) -> dict | None:
    marker = out / "stages" / f"{name}.json"
    return json.loads(marker.read_text()) if marker.exists() else None


def _mark_done(out: Path, name: str, seconds: float, **extra) -> None:
    _write_json(out / "stages" / f"{name}.json", {"stage": name, "seconds": round(seconds, 1), **extra})


def _note_attempt(out: Path, name: str) -> int:
    """Log a start of `name` (stages/attempts.jsonl) and return how many starts it has had: a stage that was
    interrupted and resumed reports it, and its `seconds` are those of the last attempt only."""
    log_path = out / "stages" / "attempts.jsonl"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"stage": name, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")
    return sum(json.loads(line)["stage"] == name for line in log_path.read_text().splitlines() if line.strip())


def _evaluate(model: str, out_dir: str, categories: list[str], limit: int, max_new_tokens: int,
              batch_size: int) -> None:
    from tooln1_jax.eval import benchmarks

    benchmarks.evaluate("bfcl", model, categories=categories, limit=limit, max_new_tokens=max_new_tokens,
                        batch_size=batch_size, out=out_dir)


def _train(command: str, config_path: str, model: str, run_dir: str, overrides: list[str]) -> None:
    from tooln1_jax.train import entry

    resume = (Path(run_dir) / "checkpoints").exists()
    entry.run(command, config_path=config_path, overrides=[f"model.path={model}", *overrides], run_dir=run_dir,
              resume=resume)


def _in_own_process(fn, *args) -> None:
    """Run one stage in a fresh process, so what a stage holds (a model, optimizer state, compiled programs) is
    gone before the next starts; a stage that dies (e.g. killed for memory) stops the chain with its exit status."""
    import multiprocessing

    process = multiprocessing.get_context("spawn").Process(target=_stage_main, args=(fn, *args))
    process.start()
    process.join()
    if process.exitcode != 0:
        signal = -process.exitcode if process.exitcode < 0 else None
        why = (f"killed by signal {signal}" + (" (out of memory? see `dmesg`)" if signal == 9 else "")
               if signal else f"exit status {process.exitcode}")
        raise RuntimeError(f"chain: stage {fn.__name__.strip('_')} failed: {why}; run the same command again to "
                           "continue from the last finished stage (a training stage resumes from its checkpoint)")


def _stage_main(fn, *args) -> None:
    logs.configure_logging()
    fn(*args)


def run(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in (args.sft_config, args.grpo_config):
        if not Path(path).is_file():
            raise FileNotFoundError(f"chain: config {path} not found (run from the repository root or pass "
                                    "--sft-config / --grpo-config)")
    settings = {"model": str(args.model), "sft_config": args.sft_config, "grpo_config": args.grpo_config,
                "eval": {"benchmark": "bfcl", "categories": list(args.eval_categories), "limit": args.eval_limit,
                         "max_new_tokens": args.eval_max_new_tokens, "decoding": "greedy"},
                "overrides": {"sft": list(args.sft_set), "grpo": list(args.grpo_set)}}
    evaluation = (list(args.eval_categories), args.eval_limit, args.eval_max_new_tokens, args.eval_batch_size)
    stages = [
        ("eval_base", (_evaluate, str(args.model), str(out / "eval_base"), *evaluation)),
        ("sft", (_train, "sft", args.sft_config, str(args.model), str(out / "sft"), list(args.sft_set))),
        ("sft_model", (_export, str(out / "sft"), str(out / "sft_model"))),
        ("eval_sft", (_evaluate, str(out / "sft_model"), str(out / "eval_sft"), *evaluation)),
        ("grpo", (_train, "train", args.grpo_config, str(out / "sft_model"), str(out / "grpo"),
                  list(args.grpo_set))),
        ("eval_grpo", (_evaluate, str(out / "grpo"), str(out / "eval_grpo"), *evaluation)),
    ]
    if args.stop_after and args.stop_after not in dict(stages):
        raise ValueError(f"--stop-after {args.stop_after!r}: not a stage ({', '.join(n for n, _ in stages)})")
    _write_json(out / "settings.json", settings)
    for name, call in stages:
        if _stage_done(out, name):
            log.info("chain: %s already done, skipped", name)
        else:
            print(f"chain: {name} ...", flush=True)
            attempts = _note_attempt(out, name)
            start = time.perf_counter()
            _in_own_process(*call)
            _mark_done(out, name, time.perf_counter() - start, attempts=attempts)
        if name == args.stop_after:
            return {"stopped_after": name}
    return summarize(out)


def _export(run_dir: str, out_dir: str) -> None:
    from tooln1_jax import checkpoint

    checkpoint.export_hf(run_dir, out_dir)


def summarize(out: Path) -> dict:
    """chain.json, chain.md and reward.png from the stages' outputs."""
    from tooln1_jax.train import metrics

    settings = json.loads((out / "settings.json").read_text())
    summaries = {name: json.loads((out / f"eval_{name}" / "summary.json").read_text())["bfcl"] for name in EVALS}
    categories = list(settings["eval"]["categories"])
    cells = {name: summaries[name]["categories"] for name in EVALS}
    table = [{"category": c, "n": cells["base"].get(c, {}).get("n"),
              **{name: cells[name].get(c, {}).get("accuracy") for name in EVALS}} for c in categories]
    totals = {name: _overall(summaries[name], categories) for name in EVALS}
    table.append({"category": "all (example-weighted)", "n": sum(r["n"] or 0 for r in table), **totals})
    history = metrics.read_metrics(out / "grpo")
    rewards = [(m["step"], m["reward/mean"]) for m in history if "reward/mean" in m and m["step"] > 0]
    first, last = _mean3([r for _, r in rewards[:3]]), _mean3([r for _, r in rewards[-3:]])
    metrics.plot(out / "grpo", out / "reward.png", keys=("reward/mean", "kl"))
    result = {"settings": settings, "table": table,
              "stage_seconds": {s: _stage_done(out, s)["seconds"] for s in STAGES},
              "stage_attempts": {s: _stage_done(out, s).get("attempts", 1) for s in STAGES},
              "grpo_reward": {"per_step": rewards, "first3": first, "last3": last,
                              "rise": None if first is None or last is None else last - first}}
    _write_json(out / "chain.json", result)
    (out / "chain.md").write_text(markdown(result) + "\n")
    return result


def _overall(summary: dict, categories: list[str]) -> float | None:
    cells = [summary["categories"][c] for c in categories if c in summary["categories"]]
    n = sum(c["n"] for c in cells)
    return sum(c["accuracy"] * c["n"] for c in cells) / n if n else None


def _mean3(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def markdown(result: dict) -> str:
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    lines = ["| BFCL category | n | base (greedy) | after SFT warm start | after GRPO |", "|---|---:|---:|---:|---:|"]
    for row in result["table"]:
        lines.append(f"| {row['category']} | {row['n']} | {pct(row['base'])} | {pct(row['sft'])} | "
                     f"{pct(row['grpo'])} |")
    reward = result["grpo_reward"]
    if reward["first3"] is not None:
        lines += ["", f"GRPO training reward: first 3 steps {reward['first3']:.3f}, last 3 steps "
                      f"{reward['last3']:.3f} (rise {reward['rise']:+.3f}, {len(reward['per_step'])} steps)."]
    seconds = result["stage_seconds"]
    attempts = result.get("stage_attempts", {})
    lines.append("Wall time (s, last attempt of each stage): " + ", ".join(
        f"{k} {v:.0f}" + (f" ({attempts[k]} attempts: resumed)" if attempts.get(k, 1) > 1 else "")
        for k, v in seconds.items()) + f"; total {sum(seconds.values()):.0f}.")
    return "\n".join(lines)


def add_parser(sub) -> None:
    p = sub.add_parser("chain", help="real weights end to end: held-out eval -> SFT warm start -> eval -> GRPO -> eval")
    p.add_argument("--model", required=True, help="HF directory or .gguf file of the starting model")
    p.add_argument("--out", required=True, help="output directory (running again continues where it stopped)")
    p.add_argument("--sft-config", default=DEFAULT_SFT_CONFIG)
    p.add_argument("--grpo-config", default=DEFAULT_GRPO_CONFIG)
    p.add_argument("--sft-set", action="append", default=[], metavar="KEY=VALUE", help="override for the SFT stage")
    p.add_argument("--grpo-set", action="append", default=[], metavar="KEY=VALUE", help="override for GRPO")
    p.add_argument("--eval-categories", type=lambda s: tuple(c.strip() for c in s.split(",") if c.strip()),
                   default=HELD_OUT_CATEGORIES)
    p.add_argument("--eval-limit", type=int, default=20, help="the first N examples of each category")
    p.add_argument("--eval-max-new-tokens", type=int, default=256)
    p.add_argument("--eval-batch-size", type=int, default=32)
    p.add_argument("--stop-after", default=None, help="stop after this stage (e.g. eval_base)")
