"""Evaluation tables (markdown, JSON-ready rows) and plots (per-category bar chart, matplotlib Agg)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

AGGREGATE_LABELS = {
    "bfcl": {"non_live": "Non-live (mean of simple, multiple, parallel, parallel_multiple)",
             "live": "Live (over all live AST examples)", "overall": "Overall (mean of the two)"},
    "acebench": {"atom": "Atom (mean of 6)", "single_turn": "Single-turn (mean of 2)",
                 "summary": "Summary (paper subset: atom + single-turn)", "normal": "Normal (all categories scored)"},
    "apibank": {"accuracy": "Level-1 call accuracy", "exact_accuracy": "Level-1 strict exact match"},
}


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def table_rows(summary: dict) -> list[dict]:
    """The summary as rows {metric, accuracy, n}: the aggregates first, then each category."""
    labels = AGGREGATE_LABELS[summary["benchmark"]]
    partial = set(summary.get("partial", ()))
    return ([{"metric": labels[k] + (" [partial: some categories not scored]" if k in partial else ""),
              "accuracy": v, "n": None} for k, v in summary["aggregates"].items()]
            + [{"metric": c, "accuracy": s["accuracy"], "n": s["n"]} for c, s in summary["categories"].items()])


def markdown(summaries: dict[str, dict]) -> str:
    """One markdown table per benchmark, accuracies in percent."""
    parts = []
    for name, summary in summaries.items():
        lines = [f"### {name} ({summary['n']} examples)", "", "| metric | accuracy (%) | n |", "|---|---:|---:|"]
        for row in table_rows(summary):
            lines.append(f"| {row['metric']} | {percent(row['accuracy'])} | {'' if row['n'] is None else row['n']} |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) if parts else "(nothing scored)"


FAILURE_KINDS = (  # (phrase in a checker's reason, kind), first match wins
    ("made a call although", "call_when_irrelevant"), ("made no call although", "no_call_when_relevant"),
    ("wrong number of calls", "wrong_number_of_calls"), ("wrong function", "wrong_function"),
    ("missing required argument", "missing_argument"), ("missing argument", "missing_argument"),
    ("unexpected argument", "unexpected_argument"), ("expected type", "wrong_type"), ("is not of type", "wrong_type"),
    ("not among", "wrong_value"), ("matches none of", "wrong_value"),
)


def failure_kind(row: dict) -> str:
    """The kind of a wrong row: its parse status when the reply has no usable call block (no_block, bad_json,
    bad_structure), else the kind its checker's reason names, else "other"."""
    if row.get("status") not in (None, "ok"):
        return row["status"]
    reason = row.get("reason") or ""
    return next((kind for phrase, kind in FAILURE_KINDS if phrase in reason), "other")


def failures_by_reason(rows: Sequence[dict]) -> dict[str, list[dict]]:
    """The wrong rows grouped by `failure_kind`, most frequent first; each with its whole reason and reply."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if not r["valid"]:
            groups.setdefault(failure_kind(r), []).append({"id": r["id"], "category": r["category"],
                                                           "reason": r["reason"], "reply": r.get("reply") or ""})
    return dict(sorted(groups.items(), key=lambda kv: -len(kv[1])))


def read_results(path: str | os.PathLike) -> list[dict]:
    """The rows of an evaluation's `results.jsonl` (the file, or the `--out` directory holding it)."""
    path = Path(path)
    path = path / "results.jsonl" if path.is_dir() else path
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _joined(rows_a: Sequence[dict], rows_b: Sequence[dict], names: tuple[str, str]) -> list[tuple[dict, dict]]:
    by_id = {(r["benchmark"], r["id"]): r for r in rows_b}
    only_a = [r["id"] for r in rows_a if (r["benchmark"], r["id"]) not in by_id]
    only_b = sorted(set(by_id) - {(r["benchmark"], r["id"]) for r in rows_a})
    if only_a or only_b:
        raise ValueError(f"compare: the two evaluations scored different examples ({len(only_a)} only in "
                         f"{names[0]}, e.g. {only_a[:3]}; {len(only_b)} only in {names[1]}, e.g. "
                         f"{[i for _, i in only_b[:3]]}): evaluate both with the same benchmark, categories and limit")
    return [(r, by_id[(r["benchmark"], r["id"])]) for r in rows_a]


def compare(rows_a: Sequence[dict], rows_b: Sequence[dict], names: tuple[str, str] = ("base", "trained")
            ) -> list[dict]:
    """Per (benchmark, category): n, each evaluation's accuracy in percent, the difference in points (b - a),
    and how many examples only one of them got right."""
    table: dict[tuple[str, str], dict] = {}
    for a, b in _joined(rows_a, rows_b, names):
        row = table.setdefault((a["benchmark"], a["category"]), {
            "benchmark": a["benchmark"], "category": a["category"], "n": 0, names[0]: 0, names[1]: 0,
            f"only {names[0]}": 0, f"only {names[1]}": 0})
        row["n"] += 1
        for name, this, other in ((names[0], a, b), (names[1], b, a)):
            row[name] += bool(this["valid"])
            row[f"only {name}"] += bool(this["valid"]) and not other["valid"]
    for row in table.values():
        row["points"] = round(100 * (row[names[1]] - row[names[0]]) / row["n"], 2)
        for name in names:
            row[name] = round(100 * row[name] / row["n"], 2)
    return list(table.values())


def differing(rows_a: Sequence[dict], rows_b: Sequence[dict], names: tuple[str, str] = ("base", "trained")
              ) -> list[dict]:
    """The examples one evaluation got right and the other wrong, with both full replies and reasons."""
    return [{"id": a["id"], "category": a["category"], f"{names[0]} right": bool(a["valid"]),
             f"{names[0]} reason": a["reason"], f"{names[0]} reply": a.get("reply") or "",
             f"{names[1]} reason": b["reason"], f"{names[1]} reply": b.get("reply") or ""}
            for a, b in _joined(rows_a, rows_b, names) if bool(a["valid"]) != bool(b["valid"])]


def category_bar_chart(summaries: dict[str, dict], path: str | os.PathLike | None = None):
    """Per-category accuracy, one panel per benchmark; saved to `path` (PNG) when given. Returns the Figure.

    Uses matplotlib's object API (Agg canvas), so no pyplot state or GUI backend is touched.
    """
    from matplotlib.figure import Figure

    names = [n for n, s in summaries.items() if s["categories"]]
    fig = Figure(figsize=(10, 3.2 * max(len(names), 1)))
    axes = fig.subplots(max(len(names), 1), 1, squeeze=False)[:, 0]
    for ax, name in zip(axes, names):
        categories = summaries[name]["categories"]
        values = [100 * s["accuracy"] for s in categories.values()]
        bars = ax.bar(range(len(values)), values, color="tab:blue")
        ax.set_xticks(range(len(values)), list(categories), rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 105)
        ax.set_ylabel("accuracy (%)")
        ax.set_title(name)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    fig.tight_layout()
    if path is not None:
        fig.savefig(Path(path), dpi=120)
    return fig
