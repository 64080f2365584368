"""Run configuration: frozen dataclasses, YAML files, dotted `--set section.key=value` overrides.

The defaults ARE the CPU demo (a tiny Qwen2 shape with the real tokenizer on the shipped sample data), so
`tooln1 train` with no arguments runs it; `configs/demo.yaml` spells the same values out. An unknown key or a
value of the wrong type is an error that names the key and the file.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from tooln1_jax import files
from tooln1_jax.rewards import plugins


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    path: str | None = None  # HF directory, HF hub id, or .gguf file; None: random initialisation (below)
    preset: str | None = None  # random init of a Qwen2.5 shape ("0.5b" ... "72b") when path is None
    # the random-init shape when neither path nor preset is given (the demo's tiny model, real vocabulary)
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    vocab_size: int = 151936
    tie_word_embeddings: bool = True
    init_seed: int = 0
    dtype: str = "auto"  # compute dtype: auto = bfloat16 on accelerators, float32 on CPU
    param_dtype: str = "float32"
    remat: bool | str = False  # backward recomputation: none (= false), dots (keep matmul outputs), full (= true)
    attention: str = "auto"  # training attention: auto | dense | blockwise | xla | cudnn (models/attention.py)
    head: str = "auto"  # training log-probs: auto (tiled on CPU, chunked on accelerators) | chunked | tiled
    # LoRA (models/lora.py): rank > 0 trains only adapters on the target projections; the frozen base is the
    # GRPO reference policy; `tooln1 export` merges the adapters into the weights
    lora_rank: int = 0
    lora_alpha: float = 16.0  # the adapters' update is scaled by lora_alpha / lora_rank
    # every projection: models/qwen2.LORA_TARGETS (kept out of this jax-free module; tests/test_lora.py checks)
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    # "demo" (the shipped demo set), "samples" (the shipped sample set), a `tooln1 prepare-data` output directory or a .parquet file of
    # prepared records, or KIND=PATH for a raw source converted on the fly (xlam|toolace|sharegpt|tooln1)
    train: str = "demo"
    test: str | None = "demo"  # held-out records for validation (None: no validation)
    tokenizer: str | None = None  # default: the model directory's, else the shipped Qwen2.5 tokenizer
    max_prompt_tokens: int = 4096
    native_tools: bool = False  # the chat template's tools= branch instead of the Tool-N1 system prompt
    shuffle: bool = True
    num_epochs: int | None = None  # None: repeat until train.steps


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    num_generations: int = 8  # G replies per prompt (reference: 5)
    max_new_tokens: int = 32  # reply cap (reference: 8192)
    temperature: float = 1.0  # (reference: 0.7)
    top_p: float = 1.0
    top_k: int = 0
    prompts_per_call: int = 0  # prompts per sampler call, all hosts together (bounds the KV cache); 0 = the batch
    num_slots: int = 0  # decode slots per process (continuous batching); 0 = one per sample of a call
    chunk_steps: int = 16  # decode steps per compiled chunk (the host refills slots between chunks)
    inference_dtype: str = ""  # dtype of the rollout's weight copy: "" = model.dtype, or float32 | bfloat16
    inference_fsdp: bool = False  # keep the FSDP axis on the rollout's weight copy (less memory, gathers per token)


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    beta: float = 1e-3  # KL coefficient (0 skips the reference model)
    kl_type: str = "low_var_kl"  # kl | abs | mse | low_var_kl
    epsilon: float = 0.2  # clip range
    epsilon_high: float | None = None  # asymmetric upper clip (DAPO); None = epsilon
    dual_clip: float | None = None
    # token-mean (current verl) | seq-mean-token-mean | seq-mean-token-sum-norm (Dr.GRPO) |
    # token-mean-per-micro (verl 0.2, the Tool-N1 release: each micro-batch's token mean, averaged)
    loss_agg: str = "token-mean"
    entropy_coef: float = 0.0
    scale_rewards: bool = True  # divide advantages by the group std (False: Dr.GRPO)
    # built-in rewards (binary | binary_no_think | think_partial | name_partial) and/or plug-ins
    # "package.module:function" (rewards/plugins.py); several are summed with `reward_weights` (empty: all 1)
    reward: tuple[str, ...] = ("binary",)
    reward_weights: tuple[float, ...] = ()
    ref_dtype: str = "param"  # the frozen reference model's weights: param (model.param_dtype) | compute (model.dtype)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3
    schedule: str = "constant"  # constant | cosine
    warmup_steps: int = 0
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    max_grad_norm: float = 1.0
    # tokens (e.g. ["<tool_call>", "</tool_call>"]) whose embedding and head rows train at `token_rows_lr` instead
    # of `lr` (the schedule scales both): for special tokens a checkpoint left untrained
    token_rows: tuple[str, ...] = ()
    token_rows_lr: float = 0.0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 20  # rollout steps (GRPO) or optimizer steps (SFT)
    batch_size: int = 8  # prompts per rollout step, all hosts together (reference: 1024)
    mini_batch_size: int = 4  # prompts per optimizer step (reference: 256)
    micro_batch_size: int = 8  # sequences per forward/backward pass (gradient accumulation; padded layout)
    layout: str = "packed"  # packed (prefix-shared groups, train/packing.py) | padded (one row per reply)
    pack_tokens: int = 0  # packed layout: row length budget (a ladder rung); 0: the longest group's rung
    micro_batch_rows: int = 0  # packed rows per forward/backward pass; 0 = one per device of the batch axes
    seed: int = 0
    log_every: int = 1
    sample_every: int = 2  # log a few sample replies every N steps (0: never)
    eval_every: int = 5  # greedy validation on held-out records every N steps (0: never)
    eval_size: int = 7
    reward_workers: int = 0  # processes scoring replies (0: in the training process)
    # where metrics go besides metrics.jsonl: tensorboard (event files in run_dir/tensorboard) and/or wandb
    # (Weights & Biases, `pip install 'tooln1-jax[wandb]'`; WANDB_MODE=offline works without an account)
    report_to: tuple[str, ...] = ("tensorboard",)
    wandb_project: str = "tooln1-jax"
    run_dir: str = "runs/demo"
    # JAX's persistent compilation cache (local or gs://; null or "" = off): compiled programs are kept there and
    # loaded, not compiled again, by a later run with the same programs, shapes, devices and jax version (a
    # restart, --resume, the next run of a config). It saves nothing on a first run, or for programs that compile
    # in under a second (jax_persistent_cache_min_compile_time_secs: not written). Trusted: whoever can write there
    # can run code in the run's process.
    compilation_cache_dir: str | None = "~/.cache/tooln1/jax_compilation_cache"


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every: int = 5  # steps between checkpoints
    keep: int = 2  # most recent checkpoints kept
    async_save: bool = True


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    max_seq_len: int = 2048  # prompt + target; longer examples are dropped and counted
    think: str = ""  # text put between <think></think> in the target (the data has no reasoning traces)
    # GRPO runs only: supervised steps (train.batch_size records each) on the policy before the first rollout;
    # the KL reference is the warm-started policy. 0 = none
    warm_start_steps: int = 50
    warm_start_lr: float = 5e-3  # their AdamW learning rate (the rest of `optim` as the run's)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    coordinator_address: str | None = None  # multi-host GPU clusters; Cloud TPU needs nothing
    num_processes: int | None = None
    process_id: int | None = None


@dataclasses.dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    rollout: RolloutConfig = RolloutConfig()
    grpo: GRPOConfig = GRPOConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    sft: SFTConfig = SFTConfig()
    mesh: MeshConfig = MeshConfig()

    def to_dict(self) -> dict:
        """Plain dicts and lists (list-valued fields are tuples in the config, lists here, as YAML writes them)."""
        return dataclasses.asdict(self, dict_factory=lambda items: {k: list(v) if isinstance(v, tuple) else v
                                                                    for k, v in items})

    def replace(self, **sections) -> "RunConfig":
        return dataclasses.replace(self, **sections)


class ConfigError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Range:
    """The allowed values of a numeric field: finite and within low..high (an end excluded when `*_open`), or one
    of `also` (special values such as -1 = auto)."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    also: tuple = ()

    def allows(self, value: float) -> bool:
        if value in self.also:
            return True
        above = self.low < value if self.low_open else self.low <= value
        below = value < self.high if self.high_open else value <= self.high
        return not (isinstance(value, float) and not math.isfinite(value)) and above and below

    def __str__(self) -> str:
        if self.high == math.inf:
            text = f"{'>' if self.low_open else '>='} {self.low:g}" if self.low > -math.inf else "finite"
        else:
            text = f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        return " or ".join([*map(str, self.also), text])


POSITIVE_INT = Range(1)
NON_NEGATIVE = Range(0)
POSITIVE = Range(0, low_open=True)
PROBABILITY = Range(0, 1, low_open=True)  # (0, 1]
UNIT_OPEN = Range(0, 1, high_open=True)  # [0, 1)
FINITE = Range()
MESH_AXIS = Range(1, also=(-1,))  # -1: the devices left over (at most one axis)

# One line per numeric field: its allowed values (None always passes where the type allows it). A numeric field
# missing here is an error of its own (tests/test_configs.py), so every new field gets a line.
RANGES = {
    "model.hidden_size": POSITIVE_INT, "model.intermediate_size": POSITIVE_INT, "model.num_layers": POSITIVE_INT,
    "model.num_heads": POSITIVE_INT, "model.num_kv_heads": POSITIVE_INT, "model.vocab_size": POSITIVE_INT,
    "model.init_seed": NON_NEGATIVE,
    "model.lora_rank": NON_NEGATIVE,  # 0: no LoRA, every parameter trains
    "model.lora_alpha": POSITIVE,
    "data.max_prompt_tokens": POSITIVE_INT,
    "data.num_epochs": POSITIVE_INT,
    "rollout.num_generations": Range(2),  # group advantages need two replies
    "rollout.max_new_tokens": POSITIVE_INT,
    "rollout.temperature": POSITIVE,
    "rollout.top_p": PROBABILITY,
    "rollout.top_k": NON_NEGATIVE,  # 0: off
    "rollout.prompts_per_call": NON_NEGATIVE,  # 0: the whole batch
    "rollout.num_slots": NON_NEGATIVE,  # 0: one slot per sample of a call
    "rollout.chunk_steps": POSITIVE_INT,
    "grpo.beta": NON_NEGATIVE,  # 0: no reference model
    "grpo.epsilon": POSITIVE,
    "grpo.epsilon_high": POSITIVE,
    "grpo.dual_clip": Range(1, low_open=True),
    "grpo.entropy_coef": FINITE,
    "optim.lr": POSITIVE,
    "optim.warmup_steps": NON_NEGATIVE,
    "optim.weight_decay": NON_NEGATIVE,
    "optim.b1": UNIT_OPEN,
    "optim.b2": UNIT_OPEN,
    "optim.eps": POSITIVE,
    "optim.max_grad_norm": POSITIVE,
    "optim.token_rows_lr": NON_NEGATIVE,
    "train.steps": POSITIVE_INT,
    "train.batch_size": POSITIVE_INT,
    "train.mini_batch_size": POSITIVE_INT,
    "train.micro_batch_size": POSITIVE_INT,
    "train.seed": NON_NEGATIVE,
    "train.log_every": POSITIVE_INT,
    "train.sample_every": NON_NEGATIVE,  # 0: never
    "train.eval_every": NON_NEGATIVE,  # 0: never
    "train.eval_size": NON_NEGATIVE,
    "train.reward_workers": NON_NEGATIVE,  # 0: in the training process
    "train.pack_tokens": NON_NEGATIVE,  # packed row budget
    "train.micro_batch_rows": NON_NEGATIVE,  # 0: one packed row per device of the batch axes
    "checkpoint.every": POSITIVE_INT,
    "checkpoint.keep": POSITIVE_INT,
    "sft.max_seq_len": POSITIVE_INT,
    "sft.warm_start_steps": NON_NEGATIVE,  # 0: GRPO from the loaded policy
    "sft.warm_start_lr": POSITIVE,
    "mesh.data": MESH_AXIS,
    "mesh.fsdp": MESH_AXIS,
    "mesh.tensor": MESH_AXIS,
    "mesh.num_processes": POSITIVE_INT,
    "mesh.process_id": NON_NEGATIVE,
}


def numeric_fields(cls=None, prefix: str = "") -> list[str]:
    """Dotted names of every int or float field (also optional ones) of the config."""
    cls = cls or RunConfig
    out = []
    for name, hint in typing.get_type_hints(cls).items():
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(hint):
            out += numeric_fields(hint, key + ".")
        elif {int, float} & set(typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)):
            out.append(key)
    return out


def check_ranges(config: RunConfig) -> None:
    """Every numeric value within its `RANGES` entry; else a ConfigError naming the key and the allowed values."""
    for key in numeric_fields():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if key not in RANGES:
            raise ConfigError(f"{key} has no allowed range in config.RANGES (add one line there)")
        if value is not None and not RANGES[key].allows(value):
            raise ConfigError(f"{key} must be {RANGES[key]}, got {value!r}")


def _check_type(value: Any, annotation: Any, key: str, where: str) -> Any:
    """The value, if it fits the annotation (int accepted for float; for a list field `tuple[X, ...]`, a list of X
    or one X); else a ConfigError naming the key."""
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    for option in options:
        if typing.get_origin(option) is tuple:
            item = typing.get_args(option)[0]
            items = value if isinstance(value, list | tuple) else [value]
            return tuple(_check_type(v, item, f"{key}[{i}]", where) for i, v in enumerate(items))
        if option is type(None) and value is None:
            return None
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is str and isinstance(value, str):
            return value
    names = " or ".join("null" if o is type(None) else o.__name__ for o in options)
    raise ConfigError(f"{where}: {key} must be {names}, got {value!r} ({type(value).__name__})")


def _build(cls, values: dict, prefix: str, where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: {prefix or 'the config'} must be a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"{where}: unknown key {key!r}; known keys here: {', '.join(fields)}")
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, key, where)
        else:
            kwargs[name] = _check_type(value, hint, key, where)
    return cls(**kwargs)


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def parse_override(text: str) -> dict:
    """`optim.lr=2e-6` -> {"optim": {"lr": 2e-06}} (the value is read as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: expected SECTION.KEY=VALUE, e.g. optim.lr=2e-6")
    try:
        value = _numbers_from_strings(_safe_load(raw)) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: not valid YAML ({e})") from None
    out: dict = {}
    node = out
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


class _RepeatedKey(yaml.YAMLError):
    def __init__(self, key, line: int):
        super().__init__(f"line {line}: repeated key {key!r}")
        self.key, self.line = key, line


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping with a repeated key (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise _RepeatedKey(key, key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _safe_load(text: str):
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    try:
        data = _safe_load(text) or {}
    except _RepeatedKey as e:
        raise ConfigError(f"{path}:{e.line}: repeated key {e.key!r}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    return _numbers_from_strings(data)


def _numbers_from_strings(node):
    """YAML 1.1 reads 1e-6 (without a dot) as a string; take such strings as the numbers they spell."""
    if isinstance(node, dict):
        return {k: _numbers_from_strings(v) for k, v in node.items()}
    if isinstance(node, str) and _looks_numeric(node) and any(c in node for c in "eE"):
        return float(node)
    return node


def load(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    """The defaults, updated by the YAML file (if any) and then by the overrides, validated."""
    values = RunConfig().to_dict()
    where = "defaults"
    if path is not None:
        values = _merge(values, _read_yaml(Path(path)))
        where = str(path)
    config = _build(RunConfig, values, "", where)
    for text in overrides:
        values = _merge(values, parse_override(text))
        config = _build(RunConfig, values, "", f"--set {text}")
    validate(config)
    return config


def validate(config: RunConfig) -> None:
    """Ranges of every value, then cross-field checks, before any long work starts."""
    check_ranges(config)
    t, r, g = config.train, config.rollout, config.grpo
    if t.batch_size % t.mini_batch_size:
        raise ConfigError(f"train.batch_size {t.batch_size} is not a multiple of train.mini_batch_size "
                          f"{t.mini_batch_size}")
    if (t.mini_batch_size * r.num_generations) % t.micro_batch_size:
        raise ConfigError(f"a mini-batch of {t.mini_batch_size} prompts x {r.num_generations} generations is not "
                          f"a multiple of train.micro_batch_size {t.micro_batch_size}")
    if config.model.remat not in (False, True, "none", "dots", "full"):
        raise ConfigError(f"model.remat must be one of false, true, none, dots, full; got {config.model.remat!r}")
    if config.sft.warm_start_steps and t.layout == "padded" and t.batch_size % t.micro_batch_size:
        raise ConfigError(f"the warm start's batches of train.batch_size {t.batch_size} records are not a multiple "
                          f"of train.micro_batch_size {t.micro_batch_size}")
    choices = {"grpo.kl_type": (g.kl_type, ("kl", "abs", "mse", "low_var_kl")),
               "grpo.loss_agg": (g.loss_agg, ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm",
                                                "token-mean-per-micro")),
               "optim.schedule": (config.optim.schedule, ("constant", "cosine")),
               "model.dtype": (config.model.dtype, ("auto", "float32", "bfloat16")),
               "model.param_dtype": (config.model.param_dtype, ("float32", "bfloat16")),
               "rollout.inference_dtype": (r.inference_dtype, ("", "float32", "bfloat16", "float16")),
               "model.attention": (config.model.attention, ("auto", "dense", "blockwise", "xla", "cudnn")),
               "model.head": (config.model.head, ("auto", "chunked", "tiled")),
               "train.layout": (t.layout, ("packed", "padded")),
               "grpo.ref_dtype": (g.ref_dtype, ("param", "compute"))}
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got {value!r}")
    lora_targets = ModelConfig.lora_targets  # the default is every projection
    if config.model.lora_rank:
        wrong = sorted(set(config.model.lora_targets) - set(lora_targets))
        if wrong or not config.model.lora_targets:
            raise ConfigError(f"model.lora_targets must be a non-empty subset of {', '.join(lora_targets)}; got "
                              f"{list(config.model.lora_targets)}")
        if config.optim.token_rows:
            raise ConfigError("optim.token_rows trains embedding rows, which are frozen with LoRA "
                              "(model.lora_rank > 0): use one or the other")
    unknown = sorted(set(t.report_to) - {"tensorboard", "wandb"})
    if unknown:
        raise ConfigError(f"train.report_to: unknown {unknown}; choose among tensorboard, wandb (or [])")
    if not g.reward:
        raise ConfigError("grpo.reward is empty: name at least one reward")
    for spec in g.reward:
        if not plugins.is_builtin(spec) and not plugins.is_plugin_spec(spec):
            raise ConfigError(f"grpo.reward {spec!r} is neither a built-in ({', '.join(plugins.BUILTINS)}) nor a "
                              "plug-in 'package.module:function'")
    if g.reward_weights and len(g.reward_weights) != len(g.reward):
        raise ConfigError(f"grpo.reward_weights has {len(g.reward_weights)} values for {len(g.reward)} rewards "
                          f"{list(g.reward)}")
    if not all(math.isfinite(w) for w in g.reward_weights):
        raise ConfigError(f"grpo.reward_weights must be finite, got {list(g.reward_weights)}")


def dump(config: RunConfig, path: str | Path) -> None:
    files.write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
