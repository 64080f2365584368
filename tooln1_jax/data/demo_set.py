"""The CPU demo's data: templated questions over four real one-argument tool schemas, whose call argument can be read
off the question, so a tiny model can learn the task in minutes. `tooln1_jax/assets/demo/{train,test}.jsonl` are this
module's output (unified records, docs/FORMATS.md §2); `python -m tooln1_jax.data.demo_set` writes them again.

The tool schemas are copied verbatim from the shipped glaive sample (assets/samples, Apache-2.0): each record
offers two of them (the one its template calls and one other, in random order; two keep the Tool-N1 prompt near
480 tokens, which bounds the demo's attention cost), and its answer is the one call its template makes. Test records are
(template, values) combinations that no train record uses; their values and templates do occur in train, so the
test set measures recall of a narrow pattern, not generalisation.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from tooln1_jax import assets
from tooln1_jax.data import prepare, records

SOURCE = "tooln1-demo"
# (sample record id, tool name): where each schema is taken from in glaive_toolcall_en_demo.json
SCHEMAS = (("sharegpt-65@5", "get_stock_price"), ("sharegpt-295@5", "get_news_headlines"),
           ("sharegpt-85@1", "find_nearest_park"), ("sharegpt-36@3", "generate_random_password"))

COMPANIES = ("Apple", "Microsoft", "Google", "Amazon", "Tesla", "Netflix", "Nvidia", "Intel", "IBM", "Oracle",
             "Adobe", "Samsung")
COUNTRIES = ("France", "Japan", "Brazil", "Canada", "India", "Germany", "Italy", "Spain", "Mexico", "Kenya", "Egypt",
             "Norway")
CITIES = ("Paris", "London", "Berlin", "Tokyo", "Madrid", "Rome", "Chicago", "Boston", "Sydney", "Toronto", "Dubai",
          "Seoul")
LENGTHS = tuple(range(8, 21))

# tool name -> (question templates, slot values as tuples of the argument values in schema order)
TEMPLATES = {
    "get_stock_price": (("What is the stock price of {company}?",
                         "How much is {company} stock worth?",
                         "Check the share price of {company}."),
                        [(c,) for c in COMPANIES]),
    "get_news_headlines": (("Show me the latest news from {country}.",
                            "What is in the news in {country}?",
                            "Get the top headlines for {country}."),
                           [(c,) for c in COUNTRIES]),
    "find_nearest_park": (("Find the nearest park in {location}.",
                           "Is there a park near me? I am in {location}.",
                           "Where is the closest park in {location}?"),
                          [(c,) for c in CITIES]),
    "generate_random_password": (("Generate a password of {length} characters.",
                                  "I need a {length}-character password.",
                                  "Make me a password of length {length}."),
                                 [(n,) for n in LENGTHS]),
}
TEST_FRACTION = 0.15


def tool_schemas() -> list[dict]:
    """The four tool dicts, as the glaive sample has them (converted by the ShareGPT reader)."""
    converted = records.convert("sharegpt", prepare.shipped_samples()["sharegpt"])
    by_id = {r["id"]: r for r in converted.records}
    return [next(t for t in by_id[record_id]["tools"] if t["name"] == name) for record_id, name in SCHEMAS]


def build(seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, test) records; the same seed gives the same records."""
    tools = tool_schemas()
    rng = random.Random(seed)
    train, test = [], []
    for tool in tools:
        name = tool["name"]
        templates, values = TEMPLATES[name]
        keys = list(tool["parameters"]["properties"])
        combos = [(t, v) for t in range(len(templates)) for v in values]
        rng.shuffle(combos)
        n_test = round(len(combos) * TEST_FRACTION)
        for i, (t, v) in enumerate(combos):
            arguments = dict(zip(keys, v))
            question = templates[t].format(**arguments)
            offered = [tool, rng.choice([other for other in tools if other is not tool])]
            rng.shuffle(offered)
            record = records.make_record(f"demo-{name}-{t}-{'-'.join(map(str, v))}", SOURCE, None, offered,
                                         [{"role": "user", "content": question}],
                                         [{"name": name, "arguments": arguments}])
            (test if i < n_test else train).append(record)
    rng.shuffle(train)
    rng.shuffle(test)
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
