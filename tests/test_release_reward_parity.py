"""The project's reward gives the Tool-N1 release's reward on every stored reply, for each of the four variants.

The release's values were recorded by running its own reward code on replies made by
tests/reference/make_release_reward_cases.py (tests/reference/RELEASE_REWARD_TABLE.md says how).
"""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest

from tooln1_jax.rewards import toolcall

REFERENCE = Path(__file__).resolve().parent / "reference"
ROWS = [json.loads(line) for line in (REFERENCE / "release_reward_table.jsonl").read_text("utf-8").splitlines()]
KINDS = sorted({row["kind"] for row in ROWS})



def scored_rows(kind: str) -> list[dict]:
    return [row for row in ROWS if row["kind"] == kind and not row.get("release_error")]


def test_the_table_is_large_and_reaches_every_reward_value():
    assert len(ROWS) >= 1000 and len(KINDS) >= 80
    values = {variant: Counter(row["release"][variant] for row in ROWS) for variant in toolcall.VARIANTS}
    assert {0.0, 1.0} <= set(values["binary"]) and {0.0, 1.0} <= set(values["binary_no_think"])
    assert {0.0, 0.2, 0.8, 1.0} <= set(values["think_partial"])
    assert {0.0, 0.2, 0.4, 0.8, 1.0} <= set(values["name_partial"])
    # the variants disagree often enough for a swapped variant to show
    assert sum(row["release"]["binary"] != row["release"]["binary_no_think"] for row in ROWS) >= 50


def test_the_table_holds_the_generator_s_replies():
    """The stored replies are the ones the generator makes now (else regenerate the table as its README says)."""
    spec = importlib.util.spec_from_file_location("make_cases", REFERENCE / "make_release_reward_cases.py")
    make_cases = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_cases)
    made = make_cases.make_cases()
    assert [(c["kind"], c["source"], c["reply"], c["answer"]) for c in made] == \
        [(r["kind"], r["source"], r["reply"], r["answer"]) for r in ROWS]


@pytest.mark.parametrize("kind", KINDS)
def test_the_project_reward_is_the_release_reward(kind):
    mismatches = []
    for row in scored_rows(kind):
        for variant, expected in row["release"].items():
            got = toolcall.score(row["reply"], row["answer"], variant)
            if got != expected:
                mismatches.append((row["source"], variant, expected, got))
    assert not mismatches, f"{len(mismatches)} (source, variant, release, project), e.g. {mismatches[:4]}"


def test_where_the_release_raises_the_project_scores_an_unreadable_call():
    """The release raises on a block of a bare number, `true` or a 5,000-deep list (a crashed training step); the
    project reads such a block as no valid call: think credit only."""
    raising = [row for row in ROWS if row.get("release_error")]
    assert {row["release_error"] for row in raising} == {"TypeError", "RecursionError"}
    for row in raising:
        think_credit = 0.2 if "<think>" in row["reply"] and "</think>" in row["reply"] else 0.0
        expected = {"binary": 0.0, "binary_no_think": 0.0, "think_partial": think_credit, "name_partial": think_credit}
        for variant, value in expected.items():
            assert toolcall.score(row["reply"], row["answer"], variant) == value, (row["kind"], variant)
