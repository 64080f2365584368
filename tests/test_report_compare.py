"""Comparing two evaluations (the notebook's base vs trained view) and grouping failures, on rows whose counts are
worked out by hand."""

from __future__ import annotations

import json

import pytest

from tooln1_jax.eval import report


def row(i, category, valid, reason="", reply=None, status="ok"):
    return {"id": f"{category}_{i}", "benchmark": "bfcl", "category": category, "valid": valid, "status": status,
            "reason": reason, "reply": reply if reply is not None else f"reply {i} " + "x" * 400}


BASE = [row(0, "simple", True), row(1, "simple", False, "no_block: no decodable call", status="no_block"),
        row(2, "simple", False, "no call matches expected call 0 (f): f: 'Oslo' not among ['Bergen']"),
        row(0, "multiple", True)]
TRAINED = [row(0, "simple", True), row(1, "simple", True), row(2, "simple", False, "f: missing argument 'unit'"),
           row(0, "multiple", False, "wrong function: expected 'f', got 'g'")]


def test_compare_counts_per_category():
    table = {r["category"]: r for r in report.compare(BASE, TRAINED)}
    assert table["simple"] == {"benchmark": "bfcl", "category": "simple", "n": 3, "base": 33.33, "trained": 66.67,
                               "only base": 0, "only trained": 1, "points": 33.33}
    assert table["multiple"]["points"] == -100.0 and table["multiple"]["only base"] == 1


def test_differing_examples_carry_both_full_replies():
    rows = report.differing(BASE, TRAINED)
    assert [r["id"] for r in rows] == ["simple_1", "multiple_0"]
    assert rows[0]["base right"] is False and rows[0]["base reason"].startswith("no_block")
    assert len(rows[0]["trained reply"]) > 400  # not cut


def test_compare_refuses_different_example_sets():
    with pytest.raises(ValueError, match=r"1 only in base, e.g. \['multiple_0'\]; 0 only in trained"):
        report.compare(BASE, TRAINED[:3])


def test_failures_grouped_by_kind_with_full_replies(tmp_path):
    groups = report.failures_by_reason(BASE + [row(3, "simple", False, "d: 5 matches none of [6] (key by key)")])
    assert list(groups) == ["wrong_value", "no_block"]  # most frequent first
    assert report.failure_kind(TRAINED[2]) == "missing_argument" and report.failure_kind(TRAINED[3]) == "wrong_function"
    assert [r["id"] for r in groups["wrong_value"]] == ["simple_2", "simple_3"]
    assert len(groups["no_block"][0]["reply"]) > 400
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in BASE))
    assert report.read_results(tmp_path) == BASE == report.read_results(tmp_path / "results.jsonl")
