"""Weight files the documentation tells users to fetch are checked against a sha256 pinned in code before use: a
wrong file is refused naming the file and both hashes, and `tooln1 convert` adds the tokenizer files (models/weights.py no longer reaches for the shipped assets)."""

from __future__ import annotations

import hashlib
import re

import pytest

from conftest import REPO, tiny_hf_model
from tooln1_jax.models import weights


def test_every_weight_file_the_docs_name_is_listed():
    docs = (REPO / "docs" / "development.md").read_text()
    named = set(re.findall(r"~/\.cache/tooln1/([\w.-]+\.gguf)", docs))
    assert named and named <= set(weights.PINNED_SHA256)


def test_a_pinned_file_with_another_hash_is_refused_naming_file_and_hashes(tmp_path, monkeypatch):
    path = tmp_path / "small.gguf"
    path.write_bytes(b"not the pinned weights")
    found = hashlib.sha256(path.read_bytes()).hexdigest()
    expected = hashlib.sha256(b"the pinned weights").hexdigest()
    monkeypatch.setitem(weights.PINNED_SHA256, path.name, expected)
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}: sha256 {found}, but small.gguf is pinned to "
                                         f"{expected}"):
        weights.open_source(path)


def test_a_file_under_the_docs_name_with_other_bytes_is_refused(tmp_path):
    path = tmp_path / "qwen2.5-coder-0.5b-instruct.gguf"
    path.write_bytes(b"whatever")
    with pytest.raises(ValueError, match=f"is pinned to {weights.PINNED_SHA256[path.name]}"):
        weights.open_source(path)


def test_a_file_with_the_pinned_hash_is_read(tmp_path, monkeypatch):
    path = tmp_path / "small.gguf"
    path.write_bytes(b"the pinned weights, which are no GGUF")
    monkeypatch.setitem(weights.PINNED_SHA256, path.name, hashlib.sha256(path.read_bytes()).hexdigest())
    with pytest.raises(ValueError, match="not a readable GGUF file"):  # past the check, into the reader
        weights.open_source(path)


def test_convert_writes_the_tokenizer_files_next_to_the_weights(tmp_path):
    from tooln1_jax import assets, cli

    tiny_hf_model(4, 2, False).save_pretrained(tmp_path / "hf")  # no tokenizer of its own: the shipped one
    assert cli.main(["convert", str(tmp_path / "hf"), "--out", str(tmp_path / "out")]) == 0
    for name in assets.TOKENIZER_FILES:
        assert (tmp_path / "out" / name).read_bytes() == (assets.TOKENIZER_DIR / name).read_bytes(), name
