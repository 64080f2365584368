"""The CPU demo's data: requests for one tool call, phrased many ways, over real tool schemas.
`tooln1_jax/assets/demo/{train,test}.jsonl` are this module's output (unified records, docs/FORMATS.md §2);
`python -m tooln1_jax.data.demo_set` writes them again.

Every question asks for a 12-character password, so every answer is the same call,
`generate_random_password({"length": 12})`, and the value can be read off the question. Each record offers that
tool and one other (in random order; two keep the Tool-N1 prompt under 512 tokens, which bounds the demo's
attention cost). The tool schemas are copied verbatim from the shipped glaive sample (assets/samples, Apache-2.0).

Why one answer: a randomly initialised 2-layer model does not learn to read a value off a 500-token prompt in the
minutes the demo has (on a set of four tools with values to copy, the supervised loss left the answers' marginal
distribution only after ~300 steps of 4 records; after 400, 1 of 21 held-out questions was answered right). The
demo shows GRPO turning a half-learned reply format into a reliable exact call under the binary reward; it does
not show tool selection or argument reading, let alone generalisation.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from tooln1_jax import assets
from tooln1_jax.data import converters, prepare, records

SOURCE = "tooln1-demo"
# (sample record id, tool name): where each schema is taken from in glaive_toolcall_en_demo.json
SCHEMAS = (("sharegpt-65@5", "get_stock_price"), ("sharegpt-295@5", "get_news_headlines"),
           ("sharegpt-85@1", "find_nearest_park"), ("sharegpt-36@3", "generate_random_password"))

TOOL = "generate_random_password"
ARGUMENTS = {"length": 12}
OPENINGS = ("", "Please ", "Hi! ", "Could you ", "Quickly, ", "Hello, can you ", "I would like you to ", "Now ")
REQUESTS = ("generate a password of 12 characters.", "make me a 12-character password.",
            "create a random password that is 12 characters long.", "give me a new password with 12 characters.",
            "generate a secure password of length 12.", "come up with a 12-character password for my account.")
TEST_FRACTION = 0.15


def tool_schemas() -> list[dict]:
    """The four tool dicts, as the glaive sample has them (converted by the ShareGPT reader)."""
    converted = converters.convert("sharegpt", prepare.shipped_samples()["sharegpt"])
    by_id = {r["id"]: r for r in converted.records}
    return [next(t for t in by_id[record_id]["tools"] if t["name"] == name) for record_id, name in SCHEMAS]


def build(seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, test) records; the same seed gives the same records."""
    tools = tool_schemas()
    (tool,) = [t for t in tools if t["name"] == TOOL]
    rng = random.Random(seed)
    combos = [(o, r) for o in range(len(OPENINGS)) for r in range(len(REQUESTS))]
    rng.shuffle(combos)
    n_test = round(len(combos) * TEST_FRACTION)
    train, test = [], []
    for i, (o, r) in enumerate(combos):
        question = OPENINGS[o] + (REQUESTS[r][0].upper() + REQUESTS[r][1:] if not OPENINGS[o] else REQUESTS[r])
        offered = [tool, rng.choice([other for other in tools if other is not tool])]
        rng.shuffle(offered)
        record = records.make_record(f"demo-{o}-{r}", SOURCE, None, offered, [{"role": "user", "content": question}],
                                     [{"name": TOOL, "arguments": dict(ARGUMENTS)}])
        (test if i < n_test else train).append(record)
    return train, test


def write(out: str | Path, seed: int = 0) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in zip(("train", "test"), build(seed)):
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(assets.ASSETS_DIR / "demo"))
    write(parser.parse_args(argv).out)


if __name__ == "__main__":
    main()
