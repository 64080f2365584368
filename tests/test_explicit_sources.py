"""No silent fallbacks: prepared data made with other prompt settings than the run's is an error naming both; the
tokenizer comes from the model (its directory, its run's model, its hub cache) and the log says which; `export`
writes the source model's tokenizer."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from train_helpers import synthetic_records, tiny_config, trainer
from tooln1_jax import assets, checkpoint
from tooln1_jax.data import loading, prepare, records


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "data"
    prepare.run(prepare.shipped_samples(), str(out))
    return out


@pytest.fixture(scope="module")
def other_tokenizer_dir(tmp_path_factory):
    """The shipped tokenizer plus one added token: the same text encodes alike, the vocabulary differs."""
    tok = assets.load_tokenizer()
    tok.add_tokens(["<tooln1_extra>"])
    path = tmp_path_factory.mktemp("tok") / "other"
    tok.save_pretrained(path)
    return path


def test_prepared_data_with_the_run_settings_loads(prepared):
    rows = loading.load_records(str(prepared), "train", assets.load_tokenizer())
    assert rows and all(r["prompt_ids"] for r in rows)


def test_prepared_data_built_without_native_tools_is_refused_for_a_native_tools_run(prepared):
    with pytest.raises(records.DataError, match=r"train.parquet: its prompts were built with native_tools=false "
                                                r"\(.*stats.json\), the run asks data.native_tools=true"):
        loading.load_records(str(prepared), "train", assets.load_tokenizer(), native_tools=True)


def test_prepared_data_from_another_tokenizer_is_refused(prepared, other_tokenizer_dir):
    other = assets.load_tokenizer(other_tokenizer_dir)
    assert assets.tokenizer_fingerprint(other) != assets.tokenizer_fingerprint(assets.load_tokenizer())
    with pytest.raises(records.DataError, match=r"its prompt ids come from the tokenizer 'shipped Qwen2.5-Instruct' "
                                                r".*the run uses another one \(.*other"):
        loading.load_records(str(prepared), "test", other)


def test_prepared_data_without_a_fingerprint_is_loaded_with_a_warning(prepared, tmp_path, caplog):
    old = tmp_path / "old"
    shutil.copytree(prepared, old)
    stats = json.loads((old / "stats.json").read_text())
    del stats["settings"]["tokenizer_sha256"]
    (old / "stats.json").write_text(json.dumps(stats))
    with caplog.at_level(logging.WARNING, logger="tooln1_jax.data.loading"):
        loading.load_records(str(old), "train", assets.load_tokenizer())
    assert "prepared before tokenizer fingerprints" in caplog.text


def test_the_tokenizer_comes_from_the_model_and_the_log_says_which(other_tokenizer_dir, tmp_path, caplog,
                                                                   monkeypatch):
    assert assets.tokenizer_dir_for(other_tokenizer_dir)[0] == other_tokenizer_dir
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(f"model:\n  path: {other_tokenizer_dir}\n")
    found, why = assets.tokenizer_dir_for(run_dir)
    assert found == other_tokenizer_dir and f"the model of run {run_dir}" in why
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert assets.tokenizer_dir_for(gguf) == (assets.TOKENIZER_DIR, "the shipped Qwen2.5 tokenizer (the tokenizer "
                                                                    "inside m.gguf is not read)")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with caplog.at_level(logging.INFO, logger="tooln1_jax.assets"):
        assert len(assets.load_tokenizer("nobody-xyz/not-cached")) == len(assets.load_tokenizer())
        assert "<tooln1_extra>" in assets.load_tokenizer(other_tokenizer_dir).get_vocab()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "'nobody-xyz/not-cached' is neither a path nor a hub id" in warnings[0].getMessage()
    assert f"tokenizer: {other_tokenizer_dir} (the model's own)" in caplog.text


def test_export_writes_the_tokenizer_of_the_model_the_run_trained(other_tokenizer_dir, tmp_path):
    cfg = tiny_config("train.steps=1", f"data.tokenizer={other_tokenizer_dir}")
    t = trainer(cfg, tmp_path / "run", records=synthetic_records())
    t.run(progress=False)
    t.close()
    out = checkpoint.export_hf(tmp_path / "run", tmp_path / "exported")
    assert "<tooln1_extra>" in json.loads((out / "tokenizer.json").read_text())["added_tokens"][-1]["content"]
