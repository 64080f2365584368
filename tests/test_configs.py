"""The shipped run configs: every file loads and validates; demo.yaml is the defaults; the Qwen2.5 GRPO configs carry
the Tool-N1 reference hyperparameters (docs/DESIGN.md, "Numerics and semantics"); and every config's batches divide
the meshes its header documents, on the TPU slice and with the 8-GPU overrides it prints."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pytest

from tooln1_jax import config
from tooln1_jax.models import presets

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SIZES = {"0_5b": "0.5B", "1_5b": "1.5B", "3b": "3B", "7b": "7B", "14b": "14B"}
# the TPU chips (JAX devices) each file's header names for its own mesh, and the GPU count of its override line
GRPO_CHIPS = {"0_5b": 32, "1_5b": 32, "3b": 32, "7b": 64, "14b": 256}
SFT_CHIPS = {"0_5b": 32, "1_5b": 32, "3b": 32, "7b": 32, "14b": 32}
GPUS = 8

# The reference run, as docs/DESIGN.md writes it.
REFERENCE = {
    ("train", "batch_size"): 1024,
    ("train", "mini_batch_size"): 256,
    ("rollout", "num_generations"): 5,
    ("rollout", "temperature"): 0.7,
    ("rollout", "max_new_tokens"): 8192,
    ("data", "max_prompt_tokens"): 4096,
    ("optim", "lr"): 1e-6,
    ("optim", "schedule"): "constant",
    ("optim", "warmup_steps"): 0,
    ("optim", "b1"): 0.9,
    ("optim", "b2"): 0.999,
    ("optim", "weight_decay"): 0.01,
    ("optim", "max_grad_norm"): 1.0,
    ("grpo", "beta"): 1e-3,
    ("grpo", "kl_type"): "low_var_kl",
    ("grpo", "epsilon"): 0.2,
    ("grpo", "epsilon_high"): None,
    ("grpo", "loss_agg"): "token-mean",
    ("grpo", "entropy_coef"): 0.0,
    ("grpo", "scale_rewards"): True,
    ("grpo", "reward"): ("binary",), ("data", "num_epochs"): 7,
    ("checkpoint", "every"): 20,
    ("checkpoint", "keep"): 3,
    ("train", "eval_every"): 20,
    ("sft", "warm_start_steps"): 0,  # the demo's default warm start is not part of the reference run
}


def grpo_path(tag: str) -> Path:
    return CONFIGS / f"qwen2_5_{tag}_grpo.yaml"


def sft_path(tag: str) -> Path:
    return CONFIGS / f"qwen2_5_{tag}_sft.yaml"


def documented_gpu_overrides(path: Path) -> list[str]:
    """The `--set` values of the 8-GPU command in the file's header comment (the block after '# 8 GPUs')."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"# {GPUS} GPUs"))
    block = []
    for line in lines[start + 1:]:
        if line.strip() == "#" or not line.startswith("#"):
            break
        block.append(line)
    text = " ".join(block)
    assert f"--config configs/{path.name}" in text, f"{path.name}: the 8-GPU command names another file"
    return re.findall(r"--set (\S+)", text)


def batch_devices(mesh: config.MeshConfig, devices: int) -> int:
    """data x fsdp devices of the mesh over `devices` (-1 = the rest); the mesh must use them all."""
    sizes = {"data": mesh.data, "fsdp": mesh.fsdp, "tensor": mesh.tensor}
    fixed = math.prod(s for s in sizes.values() if s != -1)
    assert list(sizes.values()).count(-1) <= 1 and devices % fixed == 0, f"{sizes} over {devices} devices"
    sizes = {axis: devices // fixed if s == -1 else s for axis, s in sizes.items()}
    assert math.prod(sizes.values()) == devices, f"mesh {sizes} does not use exactly {devices} devices"
    return sizes["data"] * sizes["fsdp"]


def assert_batches_divide(cfg: config.RunConfig, devices: int, sequences_per_update: int, where: str):
    rows = batch_devices(cfg.mesh, devices)
    assert cfg.train.micro_batch_size % rows == 0, f"{where}: micro_batch_size over {rows} batch devices"
    assert sequences_per_update % rows == 0, f"{where}: {sequences_per_update} sequences over {rows} devices"
    assert sequences_per_update % cfg.train.micro_batch_size == 0, f"{where}: micro-batches do not tile an update"


def assert_tensor_divides_the_model(cfg: config.RunConfig, tag: str):
    """Every dimension tensor parallelism shards (heads, KV heads, MLP, vocabulary) divides, so none is replicated."""
    hf = presets.hf_config(SIZES[tag].lower())
    for key in ("num_attention_heads", "num_key_value_heads", "intermediate_size", "vocab_size"):
        assert hf[key] % cfg.mesh.tensor == 0, f"{tag}: tensor {cfg.mesh.tensor} does not divide {key} {hf[key]}"


def test_the_expected_files_are_there():
    names = {p.name for p in CONFIGS.glob("*.yaml")}
    expected = {"demo.yaml"} | {grpo_path(t).name for t in SIZES} | {sft_path(t).name for t in SIZES}
    assert expected <= names, f"missing: {sorted(expected - names)}"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_loads_and_validates(path):
    cfg = config.load(path)
    assert isinstance(cfg, config.RunConfig)


def test_demo_yaml_spells_out_the_defaults():
    assert config.load(CONFIGS / "demo.yaml") == config.RunConfig()
    # and it spells them all out, rather than leaning on them
    import yaml

    written = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    assert set(written) == set(config.RunConfig().to_dict())
    for section, values in config.RunConfig().to_dict().items():
        assert set(written[section]) == set(values), section


@pytest.mark.parametrize("tag", SIZES)
def test_grpo_configs_hold_the_reference_hyperparameters(tag):
    cfg = config.load(grpo_path(tag))
    for (section, key), expected in REFERENCE.items():
        assert getattr(getattr(cfg, section), key) == expected, f"{section}.{key}"
    assert cfg.model.path == f"Qwen/Qwen2.5-{SIZES[tag]}-Instruct"
    assert cfg.model.dtype == "bfloat16" and cfg.model.param_dtype == "float32" and cfg.model.remat
    assert cfg.data.train == "data/tooln1" and not cfg.data.native_tools
    assert cfg.train.run_dir == f"runs/qwen2_5_{tag}_grpo"


@pytest.mark.parametrize("tag", SIZES)
def test_grpo_batches_divide_the_documented_meshes(tag):
    path = grpo_path(tag)
    cfg = config.load(path)
    assert_batches_divide(cfg, GRPO_CHIPS[tag], cfg.train.mini_batch_size * cfg.rollout.num_generations,
                          f"{path.name} on {GRPO_CHIPS[tag]} chips")
    assert_tensor_divides_the_model(cfg, tag)
    overrides = documented_gpu_overrides(path)
    assert any(o.startswith("mesh.fsdp=") for o in overrides), overrides
    gpu = config.load(path, overrides)
    assert_batches_divide(gpu, GPUS, gpu.train.mini_batch_size * gpu.rollout.num_generations,
                          f"{path.name} on {GPUS} GPUs")
    assert_tensor_divides_the_model(gpu, tag)


@pytest.mark.parametrize("tag", SIZES)
def test_sft_configs_train_the_same_model_on_the_same_data(tag):
    grpo, sft = config.load(grpo_path(tag)), config.load(sft_path(tag))
    assert sft.model == grpo.model  # and the data, read for 7 epochs by GRPO (the release), ~1 by SFT
    assert dataclasses.replace(sft.data, num_epochs=7) == grpo.data
    assert sft.sft.max_seq_len >= sft.data.max_prompt_tokens
    assert sft.train.run_dir == f"runs/qwen2_5_{tag}_sft"


@pytest.mark.parametrize("tag", SIZES)
def test_sft_batches_divide_the_documented_meshes(tag):
    path = sft_path(tag)
    cfg = config.load(path)
    assert_batches_divide(cfg, SFT_CHIPS[tag], cfg.train.batch_size, f"{path.name} on {SFT_CHIPS[tag]} chips")
    assert_tensor_divides_the_model(cfg, tag)
    gpu = config.load(path, documented_gpu_overrides(path))
    assert_batches_divide(gpu, GPUS, gpu.train.batch_size, f"{path.name} on {GPUS} GPUs")


def test_the_header_chip_counts_are_the_ones_tested():
    """The test's device counts are the files' own: '# Mesh: N TPU v5p chips'."""
    for tag in SIZES:
        for path, chips in ((grpo_path(tag), GRPO_CHIPS[tag]), (sft_path(tag), SFT_CHIPS[tag])):
            assert re.search(rf"^# Mesh: {chips} TPU v5p chips", path.read_text(), re.M), path.name


# ---- ranges of every value, refused before anything loads ----

# (override, the allowed range the error names); each was accepted before the range table, several crashing later
BAD_VALUES = [
    ("train.log_every=0", ">= 1"), ("checkpoint.every=0", ">= 1"), ("checkpoint.keep=0", ">= 1"),
    ("optim.lr=.nan", "> 0"), ("optim.lr=-1", "> 0"), ("optim.lr=.inf", "> 0"), ("optim.b1=2", "in [0, 1)"),
    ("optim.b2=1", "in [0, 1)"), ("optim.eps=0", "> 0"), ("optim.max_grad_norm=-1", "> 0"),
    ("grpo.beta=-1", ">= 0"), ("grpo.epsilon=0", "> 0"), ("grpo.dual_clip=0.5", "> 1"),
    ("grpo.entropy_coef=.nan", "finite"), ("train.eval_size=-3", ">= 0"), ("rollout.top_k=-5", ">= 0"),
    ("rollout.top_p=0", "in (0, 1]"), ("rollout.temperature=0", "> 0"), ("train.reward_workers=-2", ">= 0"),
    ("train.sample_every=-1", ">= 0"), ("data.num_epochs=0", ">= 1"), ("mesh.data=0", "-1 or >= 1"),
    ("mesh.fsdp=-2", "-1 or >= 1"), ("sft.max_seq_len=0", ">= 1"), ("optim.warmup_steps=-1", ">= 0"),
    ("optim.b1=1e400", "in [0, 1)"), ("train.eval_size=-1" + "0" * 400, ">= 0"),
]


@pytest.mark.parametrize("override, allowed", BAD_VALUES)
def test_a_value_out_of_range_is_refused_naming_key_and_range(override, allowed):
    key, value = override.split("=")
    with pytest.raises(config.ConfigError, match=re.escape(f"{key} must be {allowed}, got")):
        config.load(None, [override])


@pytest.mark.parametrize("override", ["train.log_every=0", "optim.lr=.nan", "checkpoint.keep=0"])
def test_the_cli_exits_2_before_loading_anything(override, tmp_path, capsys, monkeypatch):
    from tooln1_jax import cli
    from tooln1_jax.data import loading

    def no_loading(*args, **kwargs):
        raise AssertionError("data loaded before the config was validated")

    monkeypatch.setattr(loading, "load_records", no_loading)
    assert cli.main(["train", "--run-dir", str(tmp_path / "run"), "--set", override]) == 2
    assert override.split("=")[0] in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_edges_of_the_ranges_are_allowed():
    config.load(None, ["train.log_every=1", "checkpoint.keep=1", "optim.b1=0", "grpo.beta=0", "rollout.top_p=1",
                       "rollout.top_k=0", "train.eval_size=0", "train.reward_workers=0", "grpo.dual_clip=1.5",
                       "grpo.entropy_coef=-0.1", "mesh.data=-1", "data.num_epochs=null"])


def test_every_numeric_field_has_a_range():
    fields = config.numeric_fields()
    assert "optim.lr" in fields and "data.num_epochs" in fields and "model.dtype" not in fields
    assert sorted(fields) == sorted(config.RANGES)


def test_a_repeated_yaml_key_names_the_file_line_and_key(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("train:\n  steps: 3\noptim:\n  lr: 1.0e-5\n  b1: 0.9\n  lr: 2.0e-5\n")
    with pytest.raises(config.ConfigError, match=re.escape(f"{path}:6: repeated key 'lr'")):
        config.load(path)
    path.write_text("train:\n  steps: 3\noptim:\n  lr: 1.0e-5\ntrain:\n  steps: 5\n")
    with pytest.raises(config.ConfigError, match=re.escape(f"{path}:5: repeated key 'train'")):
        config.load(path)
    with pytest.raises(config.ConfigError, match="repeated key 'a'"):
        config.parse_override("train.x={a: 1, a: 2}")
