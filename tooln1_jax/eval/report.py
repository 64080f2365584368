"""Evaluation tables (markdown, JSON-ready rows) and plots (per-category bar chart, matplotlib Agg)."""

from __future__ import annotations

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
    rows = [{"metric": labels[k] + (" [partial: some categories not scored]" if k in partial else ""),
             "accuracy": v, "n": None} for k, v in summary["aggregates"].items()]
    for category, stats in summary["categories"].items():
        rows.append({"metric": category, "accuracy": stats["accuracy"], "n": stats["n"]})
    return rows


def markdown(summaries: dict[str, dict]) -> str:
    """One markdown table per benchmark, accuracies in percent."""
    parts = []
    for name, summary in summaries.items():
        lines = [f"### {name} ({summary['n']} examples)", "", "| metric | accuracy (%) | n |", "|---|---:|---:|"]
        for row in table_rows(summary):
            lines.append(f"| {row['metric']} | {percent(row['accuracy'])} | {'' if row['n'] is None else row['n']} |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) if parts else "(nothing scored)"


def failures(rows: Sequence[dict], n: int = 5, category: str | None = None) -> list[dict]:
    """The first `n` wrong rows (optionally of one category), reply shortened, for display."""
    out = []
    for row in rows:
        if not row["valid"] and (category is None or row["category"] == category):
            reply = row.get("reply") or ""
            out.append({"id": row["id"], "category": row["category"], "reason": row["reason"],
                        "reply": reply if len(reply) <= 300 else reply[:300] + " ..."})
            if len(out) == n:
                break
    return out


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
