"""The shipped tokenizer is the Qwen2.5 one, byte for byte, and loads offline with one call."""

import hashlib

from tooln1_jax import assets


def test_tokenizer_files_match_sha256sums():
    sums = {}
    for line in (assets.TOKENIZER_DIR / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        sums[name] = digest
    assert set(sums) == set(assets.TOKENIZER_FILES)
    for name, digest in sums.items():
        assert hashlib.sha256((assets.TOKENIZER_DIR / name).read_bytes()).hexdigest() == digest, name


def test_tokenizer_loads_offline_with_the_documented_special_ids():
    tok = assets.load_tokenizer()
    assert len(tok) == 151665
    ids = tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>", "<tool_call>", "</tool_call>"])
    assert ids == [151645, 151643, 151657, 151658]
    text = "Hello, tool <tool_call>[]</tool_call>"
    assert tok.decode(tok.encode(text)) == text


def test_model_dir_without_tokenizer_falls_back_to_the_shipped_one(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert not assets.has_tokenizer(tmp_path)
    assert len(assets.load_tokenizer(tmp_path)) == 151665
