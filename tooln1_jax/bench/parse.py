"""Benchmark: the reward and the eval parser on hostile replies (linear time); prints JSON.

    python -m tooln1_jax.bench.parse

Seconds for one `toolcall.score` (variant binary) on each reply: a 2 MB reply, 16k repeated `<tool_call>` tags,
16k closed empty blocks, a 2 MB call block, and 100k nested brackets; the best of `--repeat` runs.
"""

from __future__ import annotations

import argparse
import json
import time

from tooln1_jax.rewards import toolcall


def replies() -> dict[str, str]:
    return {
        "2MB_text_unclosed_tags": "<think>" + "x" * 2_000_000 + "<tool_call>[1" + "<tool_call>" * 1000,
        "16k_open_tool_call_tags": "<tool_call>" * 16_384,
        "16k_open_think_and_tool_call_tags": "<think>" * 16_384 + "<tool_call>" * 16_384,
        "16k_closed_empty_blocks": "<tool_call></tool_call>" * 16_384,
        "2MB_call_block": "<think>a</think><tool_call>"
                          + json.dumps([{"name": "f", "arguments": {"s": "y" * 2_000_000}}]) + "</tool_call>",
        "100k_nested_brackets": "<think>a</think><tool_call>" + "[" * 100_000 + "]" * 100_000 + "</tool_call>",
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    answer = [{"name": "f", "arguments": {}}]
    result = {}
    for name, reply in replies().items():
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            toolcall.score(reply, answer)
            times.append(time.perf_counter() - start)
        result[name] = {"chars": len(reply), "score_s": min(times)}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
