"""Scoring saved replies: parsing + checking end to end, the paper's aggregates, bad predictions files, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import eval_variants
from tooln1_jax.cli import main as cli_main
from tooln1_jax.eval import benchmarks, datasets
from tooln1_jax.eval.checkers import acebench

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("benchmark", datasets.BENCHMARKS)
def test_oracle_reply_texts_score_100_percent_through_parsing(benchmark):
    examples = datasets.load(benchmark)
    rows = benchmarks.score(examples, [eval_variants.oracle_reply(e) for e in examples])
    wrong = {r["id"] for r in rows if not r["valid"]}
    if benchmark == "bfcl":
        assert wrong == set(eval_variants.BFCL_GROUND_TRUTH_DEFECTS)
    elif benchmark == "acebench":
        # The documented defects, and the examples upstream's whitespace removal defeats (test_checker_acebench).
        assert set(eval_variants.ACEBENCH_GROUND_TRUTH_DEFECTS) <= wrong
        for row, example in zip(rows, examples):
            if row["id"] in wrong and row["id"] not in eval_variants.ACEBENCH_GROUND_TRUTH_DEFECTS:
                calls = [{c["name"]: c["arguments"]} for c in row["calls"]]
                assert acebench.check(example.tools, calls, example.ground_truth, strip_whitespace=False).valid
    else:
        assert not wrong and all(r["exact"] for r in rows)


@pytest.mark.parametrize("benchmark", datasets.BENCHMARKS)
def test_empty_replies_score_0_on_call_categories_and_100_on_irrelevance(benchmark):
    examples = datasets.load(benchmark)
    for reply in ("", "I cannot help with that.", "<think>hm</think><tool_call>[]</tool_call>"):
        summary = benchmarks.summarize(benchmark, benchmarks.score(examples, [reply] * len(examples)))
        for category, stats in summary["categories"].items():
            assert stats["accuracy"] == (1.0 if "irrelevance" in category else 0.0), (reply, category)


def test_every_benchmark_reads_the_last_block_by_default_and_the_first_on_request():
    for benchmark, category in (("bfcl", "simple"), ("acebench", "atom_bool")):
        example = datasets.load(benchmark, [category], limit=1)[0]
        good = eval_variants.oracle_reply(example)
        reply = "<think>t</think><tool_call>[]</tool_call> " + good[good.index("<tool_call>"):]
        assert benchmarks.score_reply(example, reply)["valid"]
        assert not benchmarks.score_reply(example, reply, block="first")["valid"]


def test_bfcl_aggregates_follow_the_paper():
    # Known per-category outcomes -> the aggregates computed by hand.
    correct = {"simple": (3, 4), "multiple": (1, 2), "parallel": (0, 1), "parallel_multiple": (2, 2),
               "live_simple": (1, 3), "live_multiple": (4, 5), "live_parallel": (0, 2), "irrelevance": (1, 1)}
    rows = [{"id": f"{c}_{i}", "category": c, "valid": i < k} for c, (k, n) in correct.items() for i in range(n)]
    summary = benchmarks.summarize("bfcl", rows)
    non_live = (3 / 4 + 1 / 2 + 0 / 1 + 2 / 2) / 4
    live = (1 + 4 + 0) / (3 + 5 + 2)
    assert summary["aggregates"]["non_live"] == pytest.approx(non_live)
    assert summary["aggregates"]["live"] == pytest.approx(live)
    assert summary["aggregates"]["overall"] == pytest.approx((non_live + live) / 2)
    assert summary["categories"]["irrelevance"] == {"n": 1, "correct": 1, "accuracy": 1.0}
    assert summary["partial"] == ["live", "overall"]  # live_parallel_multiple was not scored


def test_acebench_and_apibank_aggregates():
    outcome = {"atom_bool": 0.5, "atom_enum": 1.0, "single_turn_single_function": 0.25, "similar_api": 0.0}
    rows = [{"id": f"{c}{i}", "category": c, "valid": i < 4 * a} for c, a in outcome.items() for i in range(4)]
    aggregates = benchmarks.summarize("acebench", rows)["aggregates"]
    assert aggregates["atom"] == pytest.approx(0.75)
    assert aggregates["single_turn"] == pytest.approx(0.25)
    assert aggregates["summary"] == pytest.approx((0.5 + 1.0 + 0.25) / 3)
    assert aggregates["normal"] == pytest.approx((0.5 + 1.0 + 0.25 + 0.0) / 4)
    rows = [{"id": str(i), "category": "level-1", "valid": i % 2 == 0, "exact": i % 4 == 0} for i in range(8)]
    aggregates = benchmarks.summarize("apibank", rows)["aggregates"]
    assert aggregates == {"accuracy": 0.5, "exact_accuracy": 0.25}


def _made_up_predictions(path):
    """50 replies to BFCL simple / irrelevance questions (known right or wrong), plus broken lines."""
    simple = datasets.load("bfcl", ["simple"], limit=30)
    irrelevance = datasets.load("bfcl", ["irrelevance"], limit=20)
    lines, expected_valid = [], {}
    for i, example in enumerate(simple):
        right = i % 3 != 0
        reply = eval_variants.oracle_reply(example) if right else eval_variants.reply_with([{example.tools[0]["name"]: {"x": 1}}])
        lines.append(json.dumps({"id": example.id, "reply": reply}))
        expected_valid[example.id] = right
    for i, example in enumerate(irrelevance):
        right = i % 4 != 0
        reply = "<think>no</think><tool_call>[]</tool_call>" if right else eval_variants.reply_with([{example.tools[0]["name"]: {}}])
        lines.append(json.dumps({"id": example.id, "reply": reply}))
        expected_valid[example.id] = right
    lines.insert(5, "{not json")                                          # line 6
    lines.insert(10, json.dumps({"reply": "no id"}))                      # line 11
    lines.insert(20, json.dumps({"id": "simple_999999", "reply": ""}))    # line 21: unknown id
    lines.append(json.dumps({"id": simple[1].id, "reply": "again"}))      # a wrong duplicate of a right reply
    lines.append(json.dumps(["a", "list"]))                               # not an object
    path.write_text("\n".join(lines) + "\n")
    return expected_valid, len(lines)


def test_cli_scores_a_predictions_file_and_reports_its_problems(tmp_path, capsys):
    expected_valid, n_lines = _made_up_predictions(tmp_path / "pred.jsonl")
    out = tmp_path / "out"
    assert cli_main(["eval", "bfcl", "--predictions", str(tmp_path / "pred.jsonl"), "--out", str(out),
                     "--limit", "30", "--categories", "simple,irrelevance"]) == 0
    printed = capsys.readouterr()
    assert "| simple |" in printed.out and "| irrelevance |" in printed.out
    assert "bad line 6: not JSON" in printed.err
    assert "bad line 11: no string 'id'" in printed.err
    assert f"bad line {n_lines}: not a JSON object" in printed.err
    assert "unknown ids: simple_999999" in printed.err
    assert f"duplicate id 'simple_1' on line {n_lines - 1}" in printed.err  # and the first, right, reply wins:
    assert "missing ids (scored as wrong): irrelevance_20" in printed.err  # --limit 30 asks for 30 irrelevance

    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    by_id = {r["id"]: r for r in rows}
    assert {i: by_id[i]["valid"] for i in expected_valid} == expected_valid
    assert by_id["simple_1"]["valid"] and by_id["simple_1"]["reply"] != "again"
    assert set(by_id) - set(expected_valid) == {f"irrelevance_{i}" for i in range(20, 30)}
    assert all(not by_id[f"irrelevance_{i}"]["valid"] for i in range(20, 30))
    assert set(rows[0]) >= {"id", "category", "reply", "calls", "valid", "reason"}

    summary = json.loads((out / "summary.json").read_text())
    simple_ok = sum(v for k, v in expected_valid.items() if k.startswith("simple"))
    irrelevance_ok = sum(v for k, v in expected_valid.items() if k.startswith("irrelevance"))
    assert summary["bfcl"]["categories"]["simple"] == {"n": 30, "correct": simple_ok, "accuracy": simple_ok / 30}
    assert summary["bfcl"]["categories"]["irrelevance"]["correct"] == irrelevance_ok
    assert summary["bfcl"]["aggregates"]["non_live"] == pytest.approx(simple_ok / 30)
    problems = summary["predictions_problems"]
    assert [b["line"] for b in problems["bad_lines"]] == [6, 11, n_lines]
    assert problems["unknown_ids"] == ["simple_999999"]
    assert (out / "summary.md").read_text().startswith("### bfcl")


def test_categories_without_predictions_are_left_out_and_listed(tmp_path):
    example = datasets.load("bfcl", ["multiple"], limit=1)[0]
    (tmp_path / "p.jsonl").write_text(json.dumps({"id": example.id, "reply": eval_variants.oracle_reply(example)}) + "\n")
    evaluation = benchmarks.score_predictions("bfcl", tmp_path / "p.jsonl", limit=1)
    assert list(evaluation.summaries["bfcl"]["categories"]) == ["multiple"]
    assert evaluation.summaries["bfcl"]["categories"]["multiple"]["accuracy"] == 1.0
    assert "bfcl/simple" in evaluation.problems["categories_without_predictions"]
    assert evaluation.problems["missing_ids"] == []


def test_all_benchmarks_in_one_predictions_file(tmp_path):
    examples = [e for b in datasets.BENCHMARKS for e in datasets.load(b, limit=1)]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"id": e.id, "reply": eval_variants.oracle_reply(e)}) + "\n"
                                              for e in examples))
    evaluation = benchmarks.score_predictions("all", tmp_path / "p.jsonl", limit=1, out=tmp_path / "out")
    assert set(evaluation.summaries) == set(datasets.BENCHMARKS)
    assert len(evaluation.rows) == len(examples)
    assert evaluation.summaries["apibank"]["aggregates"]["accuracy"] == 1.0
    assert json.loads((tmp_path / "out" / "summary.json").read_text()).keys() >= set(datasets.BENCHMARKS)


def test_scoring_predictions_never_imports_jax(tmp_path):
    example = datasets.load("bfcl", ["simple"], limit=1)[0]
    (tmp_path / "p.jsonl").write_text(json.dumps({"id": example.id, "reply": eval_variants.oracle_reply(example)}) + "\n")
    code = (f"import sys; from tooln1_jax.eval import benchmarks, report; "
            f"e = benchmarks.score_predictions('bfcl', {str(tmp_path / 'p.jsonl')!r}, limit=1, "
            f"out={str(tmp_path / 'o')!r}); report.category_bar_chart(e.summaries, {str(tmp_path / 'c.png')!r}); "
            f"assert 'jax' not in sys.modules, 'jax was imported'; print(e.summaries['bfcl']['n'])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_benchmark_files_and_selections_fail_with_clear_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a"}\n\n[1, 2]\n')
    with pytest.raises(datasets.BenchmarkDataError, match=r"bad\.jsonl:3: expected a JSON object"):
        datasets.read_jsonl(bad)
    bad.write_text('{"id": "a"}\n{"id": \n')
    with pytest.raises(datasets.BenchmarkDataError, match=r"bad\.jsonl:2: not JSON"):
        datasets.read_jsonl(bad)
    with pytest.raises(ValueError, match="unknown bfcl categories \\['java'\\]"):
        datasets.load("bfcl", ["java"])
    with pytest.raises(ValueError, match="unknown categories \\['nope'\\]"):
        benchmarks.load_examples("all", ["simple", "nope"])
    with pytest.raises(ValueError, match="unknown benchmark"):
        datasets.load("toolbench")
    assert {e.benchmark for e in benchmarks.load_examples("all", ["simple", "atom_bool"], 1)} == {"bfcl", "acebench"}


def test_hostile_predictions_files_are_reported_with_file_and_line(tmp_path, capsys):
    example = datasets.load("bfcl", ["simple"], limit=1)[0]
    path = tmp_path / "pred.jsonl"
    good = json.dumps({"id": example.id, "reply": eval_variants.oracle_reply(example)}).encode()
    path.write_bytes(b"\n".join([
        b'{"id": "x1", "reply": "\\ud800 lone"}',   # line 1: a lone surrogate escape
        b'{"id": "x2", "reply": "caf\xe9"}',          # line 2: Latin-1, not UTF-8
        b"[" * 100_000 + b"]" * 100_000,               # line 3: nested past the recursion limit
        b"",                                           # line 4: blank, skipped
        b"null",                                       # line 5
        good,                                          # line 6
    ]) + b"\n")
    out = tmp_path / "out"
    assert cli_main(["eval", "bfcl", "--predictions", str(path), "--out", str(out), "--limit", "1",
                     "--categories", "simple"]) == 0
    err = capsys.readouterr().err
    assert f"{path}: bad line 1: id or reply is not valid Unicode (a lone surrogate)" in err
    byte = b'{"id": "x2", "reply": "caf\xe9"}'.index(b"\xe9") + 1
    assert f"{path}: bad line 2: not UTF-8 (byte {byte} of the line)" in err
    assert f"{path}: bad line 3: not JSON (nested too deeply)" in err
    assert f"{path}: bad line 5: not a JSON object (NoneType)" in err and "bad line 4" not in err
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(r["id"], r["valid"]) for r in rows] == [(example.id, True)]

    assert cli_main(["eval", "bfcl", "--predictions", str(tmp_path), "--out", str(out)]) == 2
    assert f"{tmp_path}: is a directory" in capsys.readouterr().err


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_limit_must_be_at_least_1(limit, tmp_path, capsys):
    (tmp_path / "p.jsonl").write_text("")
    assert cli_main(["eval", "bfcl", "--predictions", str(tmp_path / "p.jsonl"), "--out", str(tmp_path / "o"),
                     "--limit", limit]) == 2
    assert f"limit must be an integer >= 1 (or None: all), got {limit}" in capsys.readouterr().err
    with pytest.raises(ValueError, match="limit must be"):
        datasets.load("bfcl", ["simple"], limit=int(limit))


def test_outputs_are_strict_json_and_written_whole(tmp_path, monkeypatch):
    example = datasets.load("bfcl", ["simple"], limit=1)[0]
    replies = ['<tool_call>[{"name": "f", "arguments": {"x": NaN, "y": -Infinity}}]</tool_call>', "\ud800"]
    rows = benchmarks.score([example, example], replies)
    evaluation = benchmarks.Evaluation(rows, {"bfcl": benchmarks.summarize("bfcl", rows)})
    out = benchmarks.write_outputs(evaluation, tmp_path / "out")
    strict = lambda text: json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in the output"))  # noqa
    written = [strict(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    assert written[0]["calls"] == [{"name": "f", "arguments": {"x": None, "y": None}}]
    assert written[1]["reply"] == "\ud800"  # the lone surrogate as its JSON escape
    strict((out / "summary.json").read_text())

    # an error while writing leaves the earlier files as they were, and no temporary file behind
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    def broken(row):
        raise RuntimeError("disk full")
    monkeypatch.setattr(benchmarks, "_row_json", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        benchmarks.write_outputs(benchmarks.Evaluation(rows[:1], {}), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
