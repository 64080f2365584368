"""notebooks/eval.ipynb runs top to bottom (nbclient): on made-up predictions, and on a tiny random Qwen2."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
from nbclient import NotebookClient

import eval_variants

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "eval.ipynb"


def run_notebook(workdir: Path, overrides: str | None = None):
    """Execute the notebook in `workdir`; `overrides` is run right after the cell tagged "parameters"."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    if overrides:
        index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
        nb.cells.insert(index + 1, nbformat.v4.new_code_cell(overrides))
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}).execute()
    return nb


def outputs_of(nb, kind: str) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if kind in o.get("data", {})]


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


def test_notebook_runs_on_demo_predictions(tmp_path):
    nb = run_notebook(tmp_path)
    tables = [o["data"]["text/markdown"] for o in outputs_of(nb, "text/markdown")]
    assert any("| simple |" in t for t in tables)
    assert outputs_of(nb, "image/png"), "no bar chart shown"
    summary = json.loads((tmp_path / "runs" / "eval_notebook" / "summary.json").read_text())
    # the demo degrades one reply in three: simple (5 examples) scores 4 / 5 or 3 / 5, never all or none
    assert 0 < summary["bfcl"]["categories"]["simple"]["accuracy"] < 1
    assert summary["bfcl"]["categories"]["irrelevance"]["accuracy"] == 1.0
    # the comparison with the demo "base" (no call on every other question): a table and the differing examples
    html = "".join(o["data"]["text/html"] for o in outputs_of(nb, "text/html"))
    assert "only compared" in html and "only this" in html and "compared reply" in html
    assert (tmp_path / "runs" / "eval_notebook" / "demo_base" / "results.jsonl").exists()
    assert "### missing_argument" in "".join(tables)  # failures grouped by kind (the demo drops an argument)


def test_notebook_plots_a_runs_curves(tmp_path):
    from tooln1_jax.train.metrics import MetricsLogger

    with MetricsLogger(tmp_path / "run", tensorboard=False) as log:
        for step in range(1, 6):
            log.log(step, {"reward/mean": step / 10, "kl": step * 1e-3, "loss": 1 / step})
    run_notebook(tmp_path, f"RUN_DIR = {str(tmp_path / 'run')!r}")
    curves = tmp_path / "runs" / "eval_notebook" / "curves.png"
    from matplotlib.image import imread

    assert imread(curves).shape[:2] == (3 * 240, 700)  # three panels: reward/mean, kl, loss


def test_notebook_runs_on_a_tiny_model(tmp_path):
    eval_variants.make_tiny_qwen(tmp_path / "tiny")
    nb = run_notebook(tmp_path, f"MODEL = {str(tmp_path / 'tiny')!r}\nBENCHMARK = 'apibank'\n"
                                f"CATEGORIES = None\nLIMIT = 3\nMAX_NEW_TOKENS = 8\nOUT = 'runs/tiny'")
    assert outputs_of(nb, "image/png")
    rows = [json.loads(line) for line in (tmp_path / "runs" / "tiny" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(isinstance(r["reply"], str) for r in rows)
