"""Our BFCL checker gives the official checker's verdicts on many generated replies (oracles and perturbations).

About 114,000 replies over the 11 categories (about 10 s); all verdicts agree (the issue's floor is 99.5%).

Reference: the official AST checker, `bfcl/eval_checker/ast_eval/ast_checker.py` of PyPI `nvidia-bfcl==26.3`
(Apache-2.0; the same checker as `bfcl-eval`, which pulls every model SDK in on import). It is a test-only
dependency: `pip install --no-deps nvidia-bfcl==26.3`. This test FAILS, not skips, when it is missing.
"""

from __future__ import annotations

import copy
import json
import random

import pytest

import eval_variants
from tooln1_jax import assets
from tooln1_jax.eval.checkers import bfcl

try:
    from bfcl.eval_checker.ast_eval.ast_checker import ast_checker
    from bfcl.utils import is_empty_output, is_function_calling_format_output
except ImportError as e:  # pragma: no cover - the failure message is the point
    ast_checker = None
    IMPORT_ERROR = e

MODEL_NAME = "tooln1"  # not in the official UNDERSCORE_TO_DOT list: function names are compared unchanged


def official_verdict(functions, calls, ground_truth, category) -> tuple[bool, bool]:
    """(valid, raised) as the official eval_runner scores one decoded reply; None = the decoder failed."""
    if category in bfcl.RELEVANCE_CATEGORIES:
        made_call = calls is not None and not is_empty_output(calls)
        return (not made_call if "irrelevance" in category else made_call), False
    if calls is None or not is_function_calling_format_output(calls):
        return False, False
    try:
        return bool(ast_checker(functions, calls, ground_truth, "Python", category, MODEL_NAME)["valid"]), False
    except Exception:
        return False, True


def _load(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def _examples(category):
    root = assets.path("benchmarks", "bfcl_v3")
    entries = _load(root / f"BFCL_v3_{category}.json")
    if category in bfcl.RELEVANCE_CATEGORIES:
        return [(e, None) for e in entries]
    answers = {a["id"]: a["ground_truth"] for a in _load(root / "possible_answer" / f"BFCL_v3_{category}.json")}
    return [(e, answers[e["id"]]) for e in entries]


def test_official_checker_is_installed():
    assert ast_checker is not None, (
        f"the official BFCL checker is a test dependency: pip install --no-deps nvidia-bfcl==26.3 ({IMPORT_ERROR})")


@pytest.mark.parametrize("category", bfcl.CATEGORIES)
def test_verdicts_agree_with_the_official_checker(category):
    assert ast_checker is not None, "pip install --no-deps nvidia-bfcl==26.3"
    rng = random.Random(f"bfcl-{category}")
    total, raised, disagreements, valid_count = 0, 0, [], 0
    for entry, truth in _examples(category):
        functions = entry["function"]
        if truth is None:
            candidates = eval_variants.relevance_candidates(functions)
        else:
            candidates = eval_variants.bfcl_candidates(functions, truth, rng)
        for calls in candidates:
            ours = bfcl.check(functions, copy.deepcopy(calls), truth, category)
            theirs, did_raise = official_verdict(copy.deepcopy(functions), copy.deepcopy(calls),
                                                 copy.deepcopy(truth), category)
            total += 1
            raised += did_raise
            valid_count += theirs
            if ours.valid != theirs:
                disagreements.append((entry["id"], calls, theirs, ours.reason))
    rate = 1 - len(disagreements) / total
    print(f"{category}: {total} replies, {valid_count} valid, {len(disagreements)} disagreements, "
          f"{raised} on which the official checker raised")
    # Both outcomes must be well represented, or agreement would say little.
    assert 0.05 * total < valid_count < 0.95 * total or truth is None
    # The issue asks for >= 99.5% identical verdicts; we have them all, so any disagreement is a regression.
    assert not disagreements, f"agreement {rate:.4f}; first disagreements:\n" + "\n".join(
        f"  {i}: calls={c!r} official={t} ours={r!r}" for i, c, t, r in disagreements[:10])
