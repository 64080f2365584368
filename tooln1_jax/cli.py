"""`tooln1` command line: parses arguments and dispatches; the work lives in the modules it calls."""

from __future__ import annotations

import argparse
import sys


def _source_spec(text: str) -> tuple[str, str]:
    name, sep, location = text.partition("=")
    if not sep or not name or not location:
        raise argparse.ArgumentTypeError(f"--source wants NAME=PATH_OR_HUB_ID, got {text!r}")
    return name, location


def _add_run_args(p: argparse.ArgumentParser, demo: str) -> None:
    p.add_argument("--config", default=None,
                   help=f"YAML run config (without --config and --set: {demo}, configs/demo.yaml; with --set alone: "
                        "the defaults, the Tool-N1 reference recipe, which need a model.path)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=2e-6 (repeatable)")
    p.add_argument("--run-dir", default=None, help="where checkpoints, metrics and plots go")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --run-dir")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", default=None, help="compute dtype (default: bfloat16 on accelerators, float32 on CPU)")
    p.add_argument("--mesh", default=None, help="device mesh to shard the model over, e.g. fsdp=8 or data=2,fsdp=4 "
                                                "(default: one device)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tooln1", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare-data", help="convert raw tool-calling data into train/test parquet splits")
    p.add_argument("--source", action="append", type=_source_spec, required=True, metavar="NAME=PATH",
                   help="a raw data set: xlam|toolace|sharegpt|tooln1 = local file/dir or hub id (repeatable)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--max-prompt-tokens", type=int, default=4096, help="drop prompts longer than this")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the shipped Qwen2.5 one)")

    p = sub.add_parser("train", help="GRPO training (no --config and no --set: the CPU demo)")
    _add_run_args(p, "the CPU demo")
    p = sub.add_parser("sft", help="supervised baseline on the same records")
    _add_run_args(p, "the CPU demo's supervised baseline")

    p = sub.add_parser("generate", help="sample replies for chat messages")
    p.add_argument("--model", required=True, help="HF directory, hub id, .gguf file or checkpoint directory")
    p.add_argument("--messages", required=True, help="JSONL: one list of chat messages (or {messages: [...]}) per line")
    p.add_argument("--tools", default=None, help="JSON file with a list of tools to offer the model")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    _add_model_args(p)

    p = sub.add_parser("eval", help="score a model or saved predictions on BFCL / API-Bank / ACEBench")
    p.add_argument("benchmark", choices=["bfcl", "apibank", "acebench", "all"])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="HF directory, .gguf file, or checkpoint / run directory")
    src.add_argument("--predictions", help='JSONL file of {"id": ..., "reply": ...} lines')
    p.add_argument("--out", required=True, help="output directory (results.jsonl, summary.json, summary.md)")
    p.add_argument("--limit", type=int, default=None, help="at most this many examples per category")
    p.add_argument("--categories", default=None, help="comma-separated subset of categories")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="reply cap (default: 4096 for BFCL, the cap BFCL's own generation uses; 512 otherwise)")
    p.add_argument("--block", choices=["first", "last"], default=None,
                   help="which <tool_call> block to read (default: last, the training reward's rule; first: the "
                        "release's BFCL handler's choice)")
    p.add_argument("--native-tools", action="store_true", help="use the chat template's tools= branch")
    p.add_argument("--prompt", choices=["tooln1", "tooln1-bfcl"], default="tooln1",
                   help="tooln1: the training prompt; tooln1-bfcl: the Tool-N1 release's BFCL handler prompt, its "
                        "replies decoded as that handler did (also with --predictions)")
    _add_model_args(p)

    from tooln1_jax import chain

    chain.add_parser(sub)

    p = sub.add_parser("compile", help="compile a config's training step for a TPU slice: memory per chip, "
                                          "roofline time (exit 1 when a program does not fit)")
    p.add_argument("--config", required=True, help="YAML run config")
    p.add_argument("--topology", required=True,
                   help="a TPU slice as libtpu names it, e.g. v5p:2x4x4 (v5p-64) or v5e:2x2; 'local': this machine's "
                        "devices")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (repeatable)")
    p.add_argument("--sft", action="store_true", help="the supervised run (`tooln1 sft`) instead of GRPO")
    p.add_argument("--eval", action="store_true", help="also the greedy validation's programs")
    p.add_argument("--json", default=None, metavar="OUT", help="write the report as JSON here")

    p = sub.add_parser("export", help="write a checkpoint's parameters as a Hugging Face directory")
    p.add_argument("checkpoint", help="run directory or checkpoint step directory")
    p.add_argument("--out", required=True)

    p = sub.add_parser("convert", help="convert a model (HF dir, hub id, .gguf) into a Hugging Face directory")
    p.add_argument("source")
    p.add_argument("--out", required=True)
    return parser


def _sources(pairs: list[tuple[str, str]], parser: argparse.ArgumentParser) -> dict[str, str]:
    kinds = [kind for kind, _ in pairs]
    repeated = sorted({k for k in kinds if kinds.count(k) > 1})
    if repeated:
        parser.error(f"--source {repeated[0]} given more than once (one location per kind)")
    return dict(pairs)


def main(argv: list[str] | None = None) -> int:
    from tooln1_jax import accelerator

    accelerator.configure()  # XLA settings for a GPU, before jax starts a backend; nothing on a CPU or TPU
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _dispatch(args, parser) or 0
    except (FileNotFoundError, FileExistsError, ValueError) as e:  # bad input: the message names the file or key
        print(f"tooln1 {args.command}: error: {e}", file=sys.stderr)
        return 2


DEMO_RUN_DIRS = {"train": "runs/demo", "sft": "runs/demo_sft"}


def demo_run(command: str, run_dir: str | None) -> tuple[str, str]:
    """(config, run directory) of the CPU demo, which `tooln1 train` / `tooln1 sft` run when given no --config and
    no --set; says so first."""
    from tooln1_jax import assets

    run_dir = run_dir or DEMO_RUN_DIRS[command]
    print(f"tooln1 {command}: no --config or --set given: the CPU demo (configs/demo.yaml, shipped as "
          f"{assets.DEMO_CONFIG}) into {run_dir}; a real run names its config: --config configs/qwen2_5_7b_grpo.yaml",
          flush=True)
    return str(assets.DEMO_CONFIG), run_dir


def _dispatch(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int | None:
    """Runs the command; an exit code when the command has one of its own (compile: 1 = does not fit)."""
    if args.command == "compile":
        from tooln1_jax import aot

        return aot.run_cli(args)
    if args.command == "prepare-data":
        from tooln1_jax.data import prepare

        prepare.run(_sources(args.source, parser), args.out, seed=args.seed, test_fraction=args.test_fraction,
                    max_prompt_tokens=args.max_prompt_tokens, tokenizer_dir=args.tokenizer)
    elif args.command in ("train", "sft"):
        from tooln1_jax.train import entry

        config_path, run_dir = args.config, args.run_dir
        if config_path is None and not args.overrides:
            config_path, run_dir = demo_run(args.command, run_dir)
        entry.run(args.command, config_path=config_path, overrides=args.overrides, run_dir=run_dir,
                  resume=args.resume)
    elif args.command == "generate":
        from tooln1_jax import generate

        generate.run(args)
    elif args.command == "eval":
        from tooln1_jax.eval import benchmarks

        benchmarks.run_cli(args)
    elif args.command == "chain":
        from tooln1_jax import chain, logs

        logs.configure_logging()
        result = chain.run(args)
        if "table" in result:
            print(chain.markdown(result))
    elif args.command == "export":
        from tooln1_jax import checkpoint

        checkpoint.export_hf(args.checkpoint, args.out)
    elif args.command == "convert":
        from tooln1_jax import assets
        from tooln1_jax.models import weights

        config, params = weights.load(args.source)
        assets.copy_tokenizer(args.source, weights.save_hf(config, params, args.out))


if __name__ == "__main__":
    sys.exit(main())
