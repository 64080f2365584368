"""Files shipped with the package: the Qwen2.5 tokenizer, the Tool-N1 prompt, sample data, the CPU demo (its
records and its run config), benchmarks.

No jax import here: the data, reward and checker code use these paths too.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from pathlib import Path

from tooln1_jax import paths

ASSETS_DIR = Path(__file__).resolve().parent
TOKENIZER_DIR = ASSETS_DIR / "tokenizer"
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json")
DEMO_CONFIG = ASSETS_DIR / "demo" / "config.yaml"  # `tooln1 train` with no --config and no --set; configs/demo.yaml


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


def tokenizer_dir_for(model: str | os.PathLike | None) -> tuple[Path, str]:
    """(directory to read the tokenizer from, why) for a model as `model.path` names it: the model directory's own
    files; for a run (or checkpoint) directory, those of the model it was trained from; for a hub id, its files in
    the local Hugging Face cache; otherwise (a .gguf file, no files) the shipped Qwen2.5 tokenizer, unless the model
    says it is not a Qwen2 model (`_shipped_tokenizer_for`)."""
    if model is None:
        return TOKENIZER_DIR, "the shipped Qwen2.5 tokenizer (no model given)"
    p = paths.path(model)
    if p.is_dir():
        if not paths.is_remote(p) and has_tokenizer(p):
            return p, "the model's own"
        run_dir = p.parent.parent if p.parent.name == "checkpoints" else p
        if (run_dir / "config.yaml").is_file():
            import yaml

            run = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
            source = (run.get("data") or {}).get("tokenizer") or (run.get("model") or {}).get("path")
            if source:
                found, why = tokenizer_dir_for(source)
                return found, f"{why}, of {source} (the model of run {run_dir})"
        return _shipped_tokenizer_for(p, f"{p} has no tokenizer files")
    if p.exists():
        return _shipped_tokenizer_for(p, f"the tokenizer inside {p.name} is not read")
    cached = _hub_cached_tokenizer(str(model))
    if cached is not None:
        return cached, f"the local Hugging Face cache of {model}"
    return TOKENIZER_DIR, f"the shipped Qwen2.5 tokenizer ({model!r} is neither a path nor a hub id with a cached tokenizer)"


def _shipped_tokenizer_for(model: Path, why: str) -> tuple[Path, str]:
    """(the shipped Qwen2.5 tokenizer, why) for a local model without tokenizer files of its own; an error for a model
    whose files name another model type (a Qwen3 model has its own vocabulary and chat template)."""
    model_type = None if paths.is_remote(model) else _local_model_type(model)
    if model_type not in (None, "qwen2"):
        raise ValueError(f"{model}: a {model_type} model without tokenizer files ({why}), and the shipped tokenizer is "
                         "Qwen2.5's: set data.tokenizer to a directory holding the model's own tokenizer files (or put "
                         "them next to its weights)")
    return TOKENIZER_DIR, f"the shipped Qwen2.5 tokenizer ({why})"


def _local_model_type(model: Path) -> str | None:
    """The model_type in a model directory's config.json, or a GGUF file's general.architecture; None when the
    files do not say."""
    if not model.is_dir():
        return _gguf_architecture(model)
    try:
        return json.loads((model / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def _gguf_architecture(path: Path) -> str | None:
    """general.architecture of a GGUF file, read from its first metadata entry, where llama.cpp's writer puts it;
    None for another file or another first entry (the rest of the file is not read)."""
    key = b"general.architecture"
    size = 24 + 8 + len(key) + 4 + 8  # magic, version, counts; the key's length and bytes; the value's type and length
    with open(path, "rb") as f:
        header = f.read(size)
        if len(header) < size or header[:4] != b"GGUF" or header[24:32 + len(key)] != struct.pack("<Q", len(key)) + key:
            return None
        value_type, value_length = struct.unpack_from("<IQ", header, 32 + len(key))
        if value_type != 8:  # GGUF's string type
            return None
        return f.read(min(value_length, 256)).decode("utf-8", errors="replace")


def _hub_cached_tokenizer(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.txt"], local_files_only=True))
    except Exception:  # not a valid repo id, or nothing cached
        return None
    return path if has_tokenizer(path) else None


def copy_tokenizer(model: str | os.PathLike | None, out: str | os.PathLike) -> Path:
    """Copy the tokenizer files of `model` (as `tokenizer_dir_for` finds them) into the directory `out`, so a
    written model directory loads with its tokenizer; returns where they came from."""
    import shutil

    source, why = tokenizer_dir_for(model)
    logging.getLogger(__name__).info("tokenizer files from %s (%s)", source, why)
    for name in TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copyfile(source / name, Path(out) / name)
    return source


def load_tokenizer(model: str | os.PathLike | None = None):
    """The tokenizer `tokenizer_dir_for(model)` finds (offline); says which in the log."""
    from transformers import AutoTokenizer

    source, why = tokenizer_dir_for(model)
    log = logging.getLogger(__name__)
    if source == TOKENIZER_DIR and model is not None and not Path(model).exists():
        log.warning("tokenizer: %s", why)
    else:
        log.info("tokenizer: %s (%s)", source, why)
    return AutoTokenizer.from_pretrained(str(source), local_files_only=True)


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the vocabulary (added tokens included): equal for tokenizers that encode text alike."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()
