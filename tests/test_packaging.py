"""Every third-party module the package imports is declared in setup.py's install_requires (a runtime-only install,
`pip install -e .`, must run the quick start: `.ci/run` runs it too). Optional imports are named here with why."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

from conftest import REPO

# imported only where an optional feature is used, behind an ImportError or in a benchmark against transformers
OPTIONAL = {"wandb": "extra [wandb] (train.report_to)", "torch": "bench/rollout.py (extra [dev])"}
# needed at run time without being imported by name: transformers' apply_chat_template renders the prompts with it
INDIRECT = {"jinja2"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _setup_lists() -> dict[str, list[str]]:
    """install_requires and each extra of setup.py, read from its source (no install needed)."""
    tree = ast.parse((Path(REPO) / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg in ("install_requires", "extras_require")}
    return {"install_requires": kwargs["install_requires"], **kwargs["extras_require"]}


def _names(requirements: list[str]) -> set[str]:
    return {_normalise(re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0]) for r in requirements}


def _imported_top_level_modules() -> dict[str, str]:
    """{top-level module: first file importing it} over the package's sources."""
    found: dict[str, str] = {}
    for path in sorted((Path(REPO) / "tooln1_jax").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(REPO)))
    return found


def test_every_runtime_import_is_declared():
    declared = _names(_setup_lists()["install_requires"])
    distributions = importlib.metadata.packages_distributions()
    missing = []
    for module, where in sorted(_imported_top_level_modules().items()):
        if module in sys.stdlib_module_names or module == "tooln1_jax" or module in OPTIONAL:
            continue
        owners = {_normalise(d) for d in distributions.get(module, [module])}
        if not owners & declared:
            missing.append(f"{module} (imported in {where}; distribution {sorted(owners)})")
    missing += [f"{m} (needed indirectly)" for m in sorted(INDIRECT) if _normalise(m) not in declared]
    assert not missing, f"imported but not in install_requires: {missing}"


def test_notebook_needs_are_an_extra_that_dev_includes():
    lists = _setup_lists()
    notebook = _names(lists["notebook"])
    assert {"pandas", "ipython", "ipykernel", "nbclient", "nbformat"} <= notebook
    assert "tooln1-jax[notebook,wandb,gcs]" in lists["dev"]
    source = (Path(REPO) / "notebooks" / "eval.ipynb").read_text()
    for module in re.findall(r"(?:^|\\n|\")\s*(?:import|from) ([A-Za-z_]\w*)", source):
        if module in sys.stdlib_module_names or module == "tooln1_jax":
            continue
        owners = {_normalise(d) for d in importlib.metadata.packages_distributions().get(module, [module])}
        assert owners & (notebook | _names(lists["install_requires"])), f"the notebook imports {module}, undeclared"
