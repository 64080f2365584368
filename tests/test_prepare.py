"""`tooln1 prepare-data` on the shipped samples: counts, splits, determinism, the CLI in-process and as a process."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tooln1_jax import assets, cli
from tooln1_jax.data import converters, prepare, prompts, records
from tooln1_jax.data import prepared as prepared_files  # the fixture `prepared` is a directory
from tooln1_jax.data.prepared import read_prepared

REPO = Path(__file__).resolve().parent.parent
SAMPLES = prepare.shipped_samples()
SOURCE_ARGS = [arg for kind in ("sharegpt", "xlam", "toolace") for arg in ("--source", f"{kind}={SAMPLES[kind]}")]


def glaive_counts():
    """Examples and drops of the glaive sample, counted straight from the raw file."""
    raw = json.loads(Path(SAMPLES["sharegpt"]).read_text())
    calls = sum(t["from"] == "function_call" for row in raw for t in row["conversations"])
    with_calls = sum(any(t["from"] == "function_call" for t in row["conversations"]) for row in raw)
    no_tools = sum(not json.loads(row["tools"]) for row in raw)
    return {"rows": len(raw), "examples": calls, "dialogues_with_calls": with_calls,
            "dropped": {"no_tools": no_tools, "no_call_turn": len(raw) - no_tools - with_calls}}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    assert cli.main(["prepare-data", *SOURCE_ARGS, "--out", str(out)]) == 0
    return out


def test_counts_per_source_and_split(prepared):
    stats = json.loads((prepared / "stats.json").read_text())
    glaive = glaive_counts()
    s = stats["sources"]
    assert (s["sharegpt"]["rows"], s["sharegpt"]["examples"]) == (glaive["rows"], glaive["examples"])
    assert s["sharegpt"]["dropped"] == glaive["dropped"]
    assert (s["xlam"]["rows"], s["xlam"]["examples"], s["xlam"]["dropped"]) == (6, 6, {})
    assert (s["toolace"]["rows"], s["toolace"]["examples"], s["toolace"]["dropped"]) == (4, 5, {})
    for kind in s:
        assert s[kind]["kept"] == s[kind]["examples"] == s[kind]["train"] + s[kind]["test"]
    # round(dialogues * 0.1) dialogues go to test: 15 of the 153 glaive dialogues with calls, 1 of 6 xLAM rows,
    # 0 of 4 ToolACE dialogues (round(0.4) = 0).
    test_groups = {kind: len({records.group_of(r["id"]) for r in read_prepared(prepared / "test.parquet")
                              if r["source"] == kind}) for kind in s}
    assert test_groups == {"sharegpt": round(glaive["dialogues_with_calls"] * 0.1), "xlam": 1, "toolace": 0}
    assert stats["total"]["train"] + stats["total"]["test"] == stats["total"]["kept"] == glaive["examples"] + 11
    vocab = json.loads((assets.TOKENIZER_DIR / "tokenizer.json").read_text())
    entries = {**vocab["model"]["vocab"], **{t["content"]: t["id"] for t in vocab["added_tokens"]}}
    fingerprint = hashlib.sha256(json.dumps(sorted(entries.items())).encode()).hexdigest()  # from the file itself
    assert stats["settings"] == {"seed": 0, "test_fraction": 0.1, "max_prompt_tokens": 4096,
                                 "tokenizer": "shipped Qwen2.5-Instruct", "tokenizer_sha256": fingerprint,
                                 "native_tools": False}


def test_prepared_files_hold_the_records_with_their_prompt_ids(prepared):
    train = read_prepared(prepared / "train.parquet")
    test = read_prepared(prepared / "test.parquet")
    train_groups = {records.group_of(r["id"]) for r in train}
    assert not train_groups & {records.group_of(r["id"]) for r in test}  # no dialogue on both sides
    ids = [r["id"] for r in train + test]
    assert len(ids) == len(set(ids))
    tok = assets.load_tokenizer()
    by_id = {r["id"]: r for r in train + test}
    for record_id in ("xlam-0", "toolace-1@7", "sharegpt-0@3"):
        record = by_id.get(record_id) or pytest.fail(f"{record_id} missing")
        assert record["prompt_ids"] == prompts.encode(record, tok)
    assert by_id["toolace-1@7"]["messages"][3]["tool_calls"][1]["name"] == "Hotel Search"


def test_rerun_is_byte_identical_and_the_subprocess_cli_prints_the_counts(prepared, tmp_path):
    out = tmp_path / "again"
    result = subprocess.run([sys.executable, "-m", "tooln1_jax.cli", "prepare-data", *SOURCE_ARGS,
                             "--out", str(out)], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr
    glaive = glaive_counts()
    assert (f"sharegpt: {glaive['rows']} rows -> {glaive['examples']} examples -> kept {glaive['examples']}"
            in result.stdout)
    assert "no_call_turn=" in result.stdout and "xlam: 6 rows -> 6 examples" in result.stdout
    for name in ("train.parquet", "test.parquet", "stats.json"):
        assert (out / name).read_bytes() == (prepared / name).read_bytes(), name


def test_cli_in_process_prints_the_counts(tmp_path, capsys):
    args = ["--source", f"toolace={SAMPLES['toolace']}", "--source", f"xlam={SAMPLES['xlam']}"]
    assert cli.main(["prepare-data", *args, "--out", str(tmp_path), "--test-fraction", "0.5", "--seed", "3"]) == 0
    printed = [line.strip() for line in capsys.readouterr().out.splitlines()]
    assert printed[0].startswith("toolace: 4 rows -> 5 examples -> kept 5 (train ")  # 2 of 4 dialogues in test
    assert printed[0].endswith("dropped: none; duplicates kept: 0")
    assert printed[1].startswith("xlam: 6 rows -> 6 examples -> kept 6 (train 3, test 3); dropped: none")
    assert printed[2].startswith("total: 10 rows -> 11 examples -> kept 11")


def test_seed_changes_the_split(prepared, tmp_path):
    prepare.run({"sharegpt": SAMPLES["sharegpt"]}, str(tmp_path), seed=1)
    other = {r["id"] for r in read_prepared(tmp_path / "test.parquet")}
    seed0 = {r["id"] for r in read_prepared(prepared / "test.parquet") if r["source"] == "sharegpt"}
    assert other != seed0


def test_long_prompts_are_dropped_and_counted(tmp_path):
    tok = assets.load_tokenizer()
    converted = converters.convert("xlam", SAMPLES["xlam"])
    lengths = sorted(len(prompts.encode(r, tok)) for r in converted.records)
    limit = lengths[2]  # keeps the three shortest (ties aside)
    stats = prepare.run({"xlam": SAMPLES["xlam"]}, str(tmp_path), max_prompt_tokens=limit, test_fraction=0.0)
    longer = sum(n > limit for n in lengths)
    assert stats["sources"]["xlam"]["dropped"] == {"prompt_too_long": longer}
    assert stats["total"]["kept"] == stats["total"]["train"] == 6 - longer
    assert all(len(r["prompt_ids"]) <= limit for r in read_prepared(tmp_path / "train.parquet"))


def test_prepared_output_is_itself_a_tooln1_source(prepared, tmp_path):
    stats = prepare.run({"tooln1": str(prepared)}, str(tmp_path), test_fraction=0.0)
    assert stats["sources"]["tooln1"]["dropped"] == {}
    assert stats["sources"]["tooln1"]["kept"] == glaive_counts()["examples"] + 11


def test_bad_arguments_are_clear_errors(tmp_path, capsys):
    with pytest.raises(records.DataError, match=r"unknown source kind\(s\) \['glaive'\]"):
        prepare.run({"glaive": SAMPLES["sharegpt"]}, str(tmp_path))
    assert cli.main(["prepare-data", "--source", f"xlam={tmp_path / 'missing.json'}", "--out", str(tmp_path)]) == 2
    assert "missing.json: no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["prepare-data", "--source", "xlam=a.json", "--source", "xlam=b.json", "--out", str(tmp_path)])
    assert "--source xlam given more than once" in capsys.readouterr().err
    with pytest.raises(ValueError, match="test_fraction"):
        prepare.run({"xlam": SAMPLES["xlam"]}, str(tmp_path), test_fraction=1.0)
    with pytest.raises(records.DataError, match="no tokenizer files"):
        prepare.run({"xlam": SAMPLES["xlam"]}, str(tmp_path), tokenizer_dir=str(tmp_path))


def test_a_source_that_keeps_nothing_fails_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["prepare-data", "--source", f"xlam={SAMPLES['xlam']}", "--out", str(out),
                     "--max-prompt-tokens", "1"]) == 2
    err = capsys.readouterr().err
    assert "source xlam" in err and "kept no example of its 6 rows (dropped: {'prompt_too_long': 6})" in err
    assert not out.exists()


def test_a_directory_mixing_parquet_and_json_is_refused(prepared, tmp_path):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "train.parquet").write_bytes((prepared / "train.parquet").read_bytes())
    (mixed / "more.json").write_text(Path(SAMPLES["xlam"]).read_text())
    with pytest.raises(records.DataError, match="mixes parquet and JSON files"):
        prepare.run({"tooln1": str(mixed)}, str(tmp_path / "out"))


def test_outputs_replace_the_old_ones_as_a_whole(prepared, tmp_path, monkeypatch):
    out = tmp_path / "out"
    prepare.run({"xlam": SAMPLES["xlam"]}, str(out), test_fraction=0.5)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    write = prepared_files.write_prepared

    def interrupted_after_train(examples, path, split):
        write(examples, path, split)
        if split == "test":
            raise KeyboardInterrupt

    monkeypatch.setattr(prepared_files, "write_prepared", interrupted_after_train)
    with pytest.raises(KeyboardInterrupt):
        prepare.run({"xlam": SAMPLES["xlam"]}, str(out), test_fraction=0.5, seed=1)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old set, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary directory left
    monkeypatch.setattr(prepared_files, "write_prepared", write)
    prepare.run({"xlam": SAMPLES["xlam"]}, str(out), test_fraction=0.5, seed=1)
    assert {p.name: p.read_bytes() for p in out.iterdir()} != before
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        prepare.run({"xlam": SAMPLES["xlam"]}, str(out))
