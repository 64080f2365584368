"""The shipped run configs: every file loads and validates; the defaults are the Tool-N1 reference recipe and
demo.yaml spells the CPU demo out in full; `tooln1 train` runs the demo only with no --config and no --set; the
Qwen2.5 GRPO configs carry the reference hyperparameters (docs/DESIGN.md, "Numerics and semantics"); every config's
batches divide the meshes its header documents, on the TPU slice and with the 8-GPU overrides it prints; choice
lists are their owners'; an explicit train.steps wins over data.num_epochs."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pytest

from tooln1_jax import assets, config
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
    assert cfg.train.micro_batch_rows % rows == 0, f"{where}: micro_batch_rows over {rows} batch devices"
    assert sequences_per_update % rows == 0, f"{where}: {sequences_per_update} sequences over {rows} devices"


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
    import yaml

    model = yaml.safe_load(path.read_text())["model"]
    set_by_chain = not any(model.get(key) for key in ("path", "preset", "hidden_size"))  # the chain stages' configs
    cfg = config.load(path, ["model.path=/the/chain/sets/it"] if set_by_chain else [])
    assert isinstance(cfg, config.RunConfig)
    if set_by_chain:  # without it no model is named: refused, not a tiny default shape
        with pytest.raises(config.ConfigError, match="no model"):
            config.load(path)


def test_demo_yaml_is_the_shipped_demo_and_spells_out_every_value():
    assert (CONFIGS / "demo.yaml").resolve() == assets.DEMO_CONFIG.resolve()
    import yaml

    written = yaml.safe_load(assets.DEMO_CONFIG.read_text())
    defaults = config.RunConfig().to_dict()
    assert set(written) == set(defaults)
    for section, values in defaults.items():
        assert set(written[section]) == set(values), section


# keys of the 7B recipe file that depend on the model's size or the machine, not on the recipe
SIZE_SPECIFIC = {"model", "mesh", "rollout.prompts_per_call", "train.run_dir", "train.micro_batch_rows"}


def test_the_defaults_are_the_reference_recipe_the_7b_config_states():
    import yaml

    defaults = config.RunConfig()
    for section, values in yaml.safe_load(grpo_path("7b").read_text()).items():
        for key, value in values.items():
            if section in SIZE_SPECIFIC or f"{section}.{key}" in SIZE_SPECIFIC:
                continue
            default = getattr(getattr(defaults, section), key)
            assert default == (tuple(value) if isinstance(default, tuple) and isinstance(value, list) else
                               (value,) if isinstance(default, tuple) else value), f"{section}.{key}"
    for (section, key), expected in REFERENCE.items():
        assert getattr(getattr(defaults, section), key) == expected, f"{section}.{key}"
    assert defaults.model.path is None and defaults.model.hidden_size is None  # no model, no size


class _Recorded(Exception):
    pass


@pytest.fixture
def trainer_config(monkeypatch):
    """What config `tooln1 train` / `tooln1 sft` would train with: the trainers are replaced by a recorder."""
    from tooln1_jax.train import sft, trainer

    seen = []

    def record(cfg, resume=False):
        seen.append(cfg)
        raise _Recorded

    monkeypatch.setattr(trainer, "GRPOTrainer", record)
    monkeypatch.setattr(sft, "SFTTrainer", record)

    def run(*argv):
        from tooln1_jax import cli

        with pytest.raises(_Recorded):
            cli.main(list(argv))
        return seen.pop()

    return run


@pytest.mark.parametrize("command, run_dir", [("train", "runs/demo"), ("sft", "runs/demo_sft")])
def test_no_config_and_no_set_runs_the_demo_and_says_so_first(trainer_config, capsys, command, run_dir):
    cfg = trainer_config(command)
    demo = config.load(assets.DEMO_CONFIG)
    assert cfg == demo.replace(train=dataclasses.replace(demo.train, run_dir=run_dir))
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"tooln1 {command}: no --config or --set given: the CPU demo (configs/demo.yaml")


def test_a_model_without_a_config_trains_with_the_reference_defaults_never_the_demo(trainer_config, capsys):
    cfg = trainer_config("train", "--set", "model.path=/models/Qwen2.5-7B-Instruct")
    reference, demo = config.RunConfig().to_dict(), config.load(assets.DEMO_CONFIG).to_dict()
    got = cfg.to_dict()
    assert got["model"].pop("path") == "/models/Qwen2.5-7B-Instruct" and reference["model"].pop("path") is None
    assert got == reference
    demo_only = [f"{s}.{k}" for s in demo for k in demo[s] if demo[s][k] != reference[s].get(k, demo[s][k])]
    assert {"optim.lr", "rollout.max_new_tokens", "sft.warm_start_steps", "data.train"} <= set(demo_only)
    assert "CPU demo" not in capsys.readouterr().out


def test_set_without_a_model_or_config_is_refused_naming_the_model_keys(capsys):
    from tooln1_jax import cli

    assert cli.main(["train", "--set", "train.steps=3"]) == 2
    err = capsys.readouterr().err
    assert "no model" in err and "model.path" in err and "model.preset" in err and "configs/demo.yaml" in err


def test_an_explicit_step_count_wins_over_epochs_and_one_of_them_is_needed():
    demo = assets.DEMO_CONFIG
    both = config.load(demo, ["train.steps=5", "data.num_epochs=3"])
    assert (both.train.steps, both.data.num_epochs) == (5, 3)  # kept as given; the run uses 5 (tests/test_run_log.py)
    assert config.RunConfig().train.steps is None and config.RunConfig().data.num_epochs == 7
    with pytest.raises(config.ConfigError, match=re.escape("train.steps and data.num_epochs are both null")):
        config.load(demo, ["train.steps=null", "data.num_epochs=null"])


def test_each_choice_list_is_its_owners():
    from tooln1_jax.models import attention, head, qwen2
    from tooln1_jax.rewards import plugins
    from tooln1_jax.train import grpo, step

    owners = {"grpo.kl_type": set(grpo.KL_ESTIMATORS), "grpo.loss_agg": set(grpo.AGG_MODES),
              "optim.schedule": set(step.SCHEDULES), "model.dtype": {"auto", *qwen2.DTYPES},
              "model.param_dtype": set(qwen2.DTYPES), "rollout.inference_dtype": {"", *qwen2.DTYPES},
              "model.remat": set(qwen2.REMAT_POLICIES), "model.attention": set(attention.IMPLEMENTATIONS),
              "model.head": set(head.IMPLEMENTATIONS), "model.lora_targets": set(qwen2.LORA_TARGETS),
              "grpo.reward": set(plugins.BUILTINS)}
    choices = config.choices()
    for key, allowed in owners.items():
        assert set(choices[key]) == allowed, key
    assert config.ModelConfig().lora_targets == qwen2.LORA_TARGETS
    # what the owners accept, the config accepts: verl's KL aliases, float16 compute
    for override in ("grpo.kl_type=k3", "grpo.kl_type=k1", "model.dtype=float16", "model.param_dtype=float16"):
        config.load(assets.DEMO_CONFIG, [override])
    with pytest.raises(config.ConfigError, match="grpo.kl_type must be one of .*k3.*; got 'k9'"):
        config.load(assets.DEMO_CONFIG, ["grpo.kl_type=k9"])


def _imports(module_file: Path) -> set[str]:
    """Every module a source file imports, at its top or inside functions."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(module_file.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_layering_lower_modules_do_not_import_higher_ones():
    package = Path(config.__file__).parent
    assert not {m for m in _imports(package / "paths.py") if m.startswith("tooln1_jax.files")}
    assert "tooln1_jax.paths" in _imports(package / "files.py")  # files builds on paths, not the reverse
    assert not {m for m in _imports(package / "models" / "weights.py") if m.startswith("tooln1_jax.assets")}
    import subprocess
    import sys

    code = ("import sys, tooln1_jax.config; "
            "print(sorted(m for m in sys.modules if m == 'jax' or m.startswith('tooln1_jax.rewards')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out  # importing the config brings neither jax nor the reward package


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
    config.load(assets.DEMO_CONFIG, ["train.log_every=1", "checkpoint.keep=1", "optim.b1=0", "grpo.beta=0", "rollout.top_p=1",
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
