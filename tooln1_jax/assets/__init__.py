"""Files shipped with the package: the Qwen2.5 tokenizer, the Tool-N1 prompt, sample data, benchmarks.

No jax import here: the data, reward and checker code use these paths too.
"""

from __future__ import annotations

import os
from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent
TOKENIZER_DIR = ASSETS_DIR / "tokenizer"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json")


def path(*parts: str) -> Path:
    """Absolute path of a shipped asset; a clear error when it is missing from the install."""
    p = ASSETS_DIR.joinpath(*parts)
    if not p.exists():
        raise FileNotFoundError(f"shipped asset not found: {p} (is the package installed completely?)")
    return p


def has_tokenizer(model_dir: str | os.PathLike) -> bool:
    """True when a model directory brings tokenizer files of its own."""
    d = Path(model_dir)
    return d.is_dir() and ((d / "tokenizer.json").exists() or (d / "vocab.json").exists())


def load_tokenizer(model_dir: str | os.PathLike | None = None):
    """The tokenizer of `model_dir` if it has one, else the shipped Qwen2.5 tokenizer (offline)."""
    from transformers import AutoTokenizer

    source = Path(model_dir) if model_dir is not None and has_tokenizer(model_dir) else TOKENIZER_DIR
    return AutoTokenizer.from_pretrained(str(source), local_files_only=True)
