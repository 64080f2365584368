"""`tooln1 generate` / `tooln1 eval` with `--mesh`: the model is loaded sharded over the mesh (the same mesh code as
training), and the replies on 8 CPU devices equal those on one device."""

from __future__ import annotations

import json

from conftest import run_on_fake_devices, tiny_hf_model

CODE = """
import io, json, sys
from pathlib import Path
import jax
from tooln1_jax import checkpoint, parallel
from tooln1_jax.cli import main

model, out = sys.argv[1], Path(sys.argv[2])
assert jax.device_count() == 8
_, params = checkpoint.load_model(model, mesh=parallel.make_mesh("data=2,fsdp=4"))
embedding = params["model"]["embed_tokens"]["embedding"]
print("SHARDING", json.dumps([str(embedding.sharding.spec), len(embedding.sharding.device_set)]))
load_model = checkpoint.load_model


def load_and_record(*args, **kwargs):  # which devices the CLI's model lands on
    config, params = load_model(*args, **kwargs)
    with open(out / "loaded.txt", "a") as f:
        f.write(f"{len(params['model']['embed_tokens']['embedding'].sharding.device_set)}\\n")
    return config, params


checkpoint.load_model = load_and_record
chats = out / "chats.jsonl"
chats.write_text(json.dumps([{"role": "user", "content": "Hello there"}]) + "\\n"
                 + json.dumps([{"role": "user", "content": "What is 2+2?"}]) + "\\n")
for name, extra in [("one", []), ("fsdp8", ["--mesh", "fsdp=8"])]:
    sys.stdout = io.StringIO()
    assert main(["generate", "--model", model, "--messages", str(chats), "--max-new-tokens", "8"] + extra) == 0
    text, sys.stdout = sys.stdout.getvalue(), sys.__stdout__
    print("GENERATE", name, json.dumps([json.loads(line)["reply"] for line in text.splitlines()]))
for name, extra in [("one", []), ("mesh", ["--mesh", "data=2,fsdp=4"])]:
    assert main(["eval", "bfcl", "--model", model, "--out", str(out / name), "--limit", "2",
                 "--categories", "simple,multiple", "--max-new-tokens", "12"] + extra) == 0
"""


def test_eval_and_generate_on_an_8_device_mesh_equal_one_device(tmp_path):
    model = tiny_hf_model(2, 1, True, vocab=151936, layers=1, head_dim=16, init_std=0.3)
    model.config.max_position_embeddings = 4096  # room for the Tool-N1 system prompt and BFCL's tools
    model.save_pretrained(tmp_path / "hf")
    code = CODE.replace("sys.argv[1], Path(sys.argv[2])", f"{str(tmp_path / 'hf')!r}, Path({str(tmp_path)!r})")
    stdout = run_on_fake_devices(code, n=8)
    lines = {tuple(line.split(" ", 2)[:2]): line.split(" ", 2)[2] for line in stdout.splitlines()
             if line.startswith("GENERATE ")}
    spec, devices = json.loads(next(l.split(" ", 1)[1] for l in stdout.splitlines() if l.startswith("SHARDING ")))
    assert devices == 8 and "fsdp" in spec  # the vocabulary axis is sharded over the mesh
    one, eight = json.loads(lines[("GENERATE", "one")]), json.loads(lines[("GENERATE", "fsdp8")])
    assert one == eight and len(one) == 2 and any(one)
    rows = {name: [json.loads(l) for l in (tmp_path / name / "results.jsonl").read_text().splitlines()]
            for name in ("one", "mesh")}
    assert [r["reply"] for r in rows["one"]] == [r["reply"] for r in rows["mesh"]] and len(rows["one"]) == 4
    assert (tmp_path / "loaded.txt").read_text().split() == ["1", "8", "1", "8"]  # generate x 2, eval x 2
