"""Run configuration: frozen dataclasses, YAML files, dotted `--set section.key=value` overrides.

The defaults are the Tool-N1 reference recipe (arXiv 2505.00024 and its release, as configs/qwen2_5_7b_grpo.yaml
states it): what depends on the model's size (the model, the mesh, memory settings) is not a default, so a config
names its model and a run without one is refused. The CPU demo is a config of its own (`assets.DEMO_CONFIG`, also at
configs/demo.yaml), which `tooln1 train` runs when given no --config and no --set. An unknown key or a value of the
wrong type is an error that names the key and the file.

Choice lists (kl_type, dtypes, attention, reward names, ...) are the owning modules' own, read by `choices()` when a
config is validated: those modules bring jax, which importing this module does not.
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


def _every_lora_target() -> tuple[str, ...]:
    from tooln1_jax.models import qwen2

    return qwen2.LORA_TARGETS


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    path: str | None = None  # HF directory, HF hub id, or .gguf file; None: random initialisation (below)
    # random init of a preset shape when path is None: "qwen2.5-0.5b" ... "qwen2.5-72b" (a bare "7b" is Qwen2.5),
    # "qwen3-0.6b" ... "qwen3-32b" (models/presets.py)
    preset: str | None = None
    # the random-init shape, all of it needed when neither path nor preset is given (no default: a model's size)
    hidden_size: int | None = None
    intermediate_size: int | None = None
    num_layers: int | None = None
    num_heads: int | None = None
    num_kv_heads: int | None = None
    vocab_size: int | None = None
    tie_word_embeddings: bool | None = None
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
    # default: every projection, models/qwen2.LORA_TARGETS (read when a config is made: qwen2 brings jax)
    lora_targets: tuple[str, ...] = dataclasses.field(default_factory=_every_lora_target)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    # "demo" / "samples" (the shipped demo / sample set), a `tooln1 prepare-data` output directory or a .parquet file
    # of prepared records, or KIND=PATH for a raw source converted on the fly (xlam|toolace|sharegpt|tooln1)
    train: str = "data/tooln1"  # the recipe's `tooln1 prepare-data --out data/tooln1`
    test: str | None = "data/tooln1"  # held-out records for validation (None: no validation)
    # default: the model directory's, else the shipped Qwen2.5 tokenizer (for a Qwen2 model only: a Qwen3 model
    # without tokenizer files is an error naming this key)
    tokenizer: str | None = None
    max_prompt_tokens: int = 4096
    native_tools: bool = False  # the chat template's tools= branch instead of the Tool-N1 system prompt
    shuffle: bool = True
    # passes over the training records; they set the run's length when train.steps is null (the release: 7). An
    # explicit train.steps wins: num_epochs is then not used (the records repeat as the steps need)
    num_epochs: int | None = 7


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    num_generations: int = 5  # G replies per prompt
    max_new_tokens: int = 8192  # reply cap
    temperature: float = 0.7
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
    lr: float = 1e-6
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
    # rollout steps (GRPO) or optimizer steps (SFT); null: the whole batches data.num_epochs passes hold. Given,
    # it wins over data.num_epochs (which is then not used); one of the two must be set
    steps: int | None = None
    batch_size: int = 1024  # prompts per rollout step, all hosts together
    mini_batch_size: int = 256  # prompts per optimizer step
    pack_tokens: int = 0  # row length budget of the packed rows (a ladder rung); 0: the longest group's rung
    # packed rows (train/packing.py) per forward/backward pass (gradient accumulation); 0 = one per device of the
    # batch axes
    micro_batch_rows: int = 0
    seed: int = 0
    log_every: int = 1
    sample_every: int = 10  # log a few sample replies every N steps (0: never)
    eval_every: int = 20  # greedy validation on held-out records every N steps (0: never)
    eval_size: int = 256
    reward_workers: int = 0  # processes scoring replies (0: in the training process)
    # where metrics go besides metrics.jsonl: tensorboard (event files in run_dir/tensorboard) and/or wandb
    # (Weights & Biases, `pip install 'tooln1-jax[wandb]'`; WANDB_MODE=offline works without an account)
    report_to: tuple[str, ...] = ("tensorboard",)
    wandb_project: str = "tooln1-jax"
    run_dir: str = "runs/tooln1"
    # JAX's persistent compilation cache (local or gs://; null or "" = off): compiled programs are kept there and
    # loaded, not compiled again, by a later run with the same programs, shapes, devices and jax version (a
    # restart, --resume, the next run of a config). It saves nothing on a first run, or for programs that compile
    # in under a second (jax_persistent_cache_min_compile_time_secs: not written). Trusted: whoever can write there
    # can run code in the run's process.
    compilation_cache_dir: str | None = "~/.cache/tooln1/jax_compilation_cache"


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every: int = 20  # steps between checkpoints
    keep: int = 3  # most recent checkpoints kept
    async_save: bool = True


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    max_seq_len: int = 4608  # prompt + target (data.max_prompt_tokens + 512); longer examples are dropped and counted
    think: str = ""  # text put between <think></think> in the target (the data has no reasoning traces)
    # GRPO runs only: supervised steps (train.batch_size records each) on the policy before the first rollout;
    # the KL reference is the warm-started policy. 0 = none (the reference run; its SFT-then-RL row: `tooln1 sft`)
    warm_start_steps: int = 0
    warm_start_lr: float = 1e-5  # their AdamW learning rate (the SFT configs' lr; the rest of `optim` as the run's)


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
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)  # made on use: its lora_targets need jax
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


# keys that configs used to have: what to set instead
REMOVED = {
    "train.micro_batch_size": "set train.micro_batch_rows (packed rows per forward/backward pass) instead",
    "train.layout": "training always packs each prompt's replies into shared rows (train/packing.py); delete the key",
}


def _options(annotation: Any) -> tuple:
    """The types a field allows: those of a union (`int | None`), else the annotation alone."""
    return typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)


def _value(config: RunConfig, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


def numeric_fields(cls=RunConfig, prefix: str = "") -> list[str]:
    """Dotted names of every int or float field (also optional ones) of the config."""
    out = []
    for name, hint in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(hint):
            out += numeric_fields(hint, f"{prefix}{name}.")
        elif {int, float} & set(_options(hint)):
            out.append(f"{prefix}{name}")
    return out


def check_ranges(config: RunConfig) -> None:
    """Every numeric value within its `RANGES` entry; else a ConfigError naming the key and the allowed values."""
    for key in numeric_fields():
        value = _value(config, key)
        if key not in RANGES:
            raise ConfigError(f"{key} has no allowed range in config.RANGES (add one line there)")
        if value is not None and not RANGES[key].allows(value):
            raise ConfigError(f"{key} must be {RANGES[key]}, got {value!r}")


def _check_type(annotation: Any, value: Any, key: str, where: str) -> Any:
    """The value, if it fits the annotation (int accepted for float; for a list field `tuple[X, ...]`, a list of X
    or one X); else a ConfigError naming the key."""
    options = _options(annotation)
    for option in options:
        if typing.get_origin(option) is tuple:
            item = typing.get_args(option)[0]
            items = value if isinstance(value, list | tuple) else [value]
            return tuple(_check_type(item, v, f"{key}[{i}]", where) for i, v in enumerate(items))
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
    hints = typing.get_type_hints(cls)  # the dataclass's fields, in order
    dotted = f"{prefix}." if prefix else ""
    unknown = sorted(set(values) - set(hints))
    if unknown:
        key = dotted + unknown[0]
        if key in REMOVED:
            raise ConfigError(f"{where}: {key} was removed: {REMOVED[key]}")
        raise ConfigError(f"{where}: unknown key {key!r}; known keys here: {', '.join(hints)}")
    kwargs = {}
    for name, value in values.items():
        check = _build if dataclasses.is_dataclass(hints[name]) else _check_type
        kwargs[name] = check(hints[name], value, dotted + name, where)
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
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


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
    if isinstance(node, str) and any(c in node for c in "eE"):
        try:
            return float(node)
        except ValueError:
            pass
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


RANDOM_INIT_SHAPE = ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "vocab_size",
                     "tie_word_embeddings")  # the model fields a random initialisation without a preset needs
REF_DTYPES = ("param", "compute")  # grpo.ref_dtype, read by the trainer and `tooln1 compile`
REPORT_TO = ("tensorboard", "wandb")  # train.report_to, wired in train/run.py


def choices() -> dict[str, tuple]:
    """The allowed values of each choice field, taken from the code that implements them (imported on use: the
    models and the GRPO loss bring jax; the reward names are the reward package's built-ins)."""
    from tooln1_jax.models import attention, head, qwen2
    from tooln1_jax.rewards import plugins
    from tooln1_jax.train import grpo, step

    return {"grpo.kl_type": tuple(grpo.KL_ESTIMATORS), "grpo.loss_agg": grpo.AGG_MODES,
            "optim.schedule": step.SCHEDULES, "model.dtype": ("auto", *qwen2.DTYPES),
            "model.param_dtype": qwen2.DTYPES, "rollout.inference_dtype": ("", *qwen2.DTYPES),
            "model.remat": qwen2.REMAT_POLICIES, "model.attention": attention.IMPLEMENTATIONS,
            "model.head": head.IMPLEMENTATIONS, "model.lora_targets": qwen2.LORA_TARGETS,
            "grpo.ref_dtype": REF_DTYPES, "train.report_to": REPORT_TO, "grpo.reward": plugins.BUILTINS}


def validate(config: RunConfig) -> None:
    """Ranges of every value, then cross-field checks, before any long work starts."""
    check_ranges(config)
    t, g = config.train, config.grpo
    if t.batch_size % t.mini_batch_size:
        raise ConfigError(f"train.batch_size {t.batch_size} is not a multiple of train.mini_batch_size "
                          f"{t.mini_batch_size}")
    m = config.model
    unset = [f"model.{name}" for name in RANDOM_INIT_SHAPE if getattr(m, name) is None]
    if not m.path and not m.preset and unset:
        raise ConfigError(f"no model: set model.path (an HF directory, hub id or .gguf file), model.preset (a "
                          f"Qwen2.5 or Qwen3 shape, randomly initialised) or the whole random-init shape "
                          f"({', '.join(unset)} unset). The defaults are the reference recipe, without a model; "
                          "`tooln1 train` with no --config and no --set runs the CPU demo (configs/demo.yaml)")
    if t.steps is None and config.data.num_epochs is None:
        raise ConfigError("train.steps and data.num_epochs are both null: set one of them, the run's length "
                          "(train.steps wins when both are set)")
    allowed = choices()
    for key, values in allowed.items():  # the one-value fields; the list-valued ones are checked below
        value = _value(config, key)
        if not isinstance(value, tuple) and value not in values:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, values))}; got {value!r}")
    if m.lora_rank:
        targets = allowed["model.lora_targets"]
        if set(m.lora_targets) - set(targets) or not m.lora_targets:
            raise ConfigError(f"model.lora_targets must be a non-empty subset of {', '.join(targets)}; got "
                              f"{list(m.lora_targets)}")
        if config.optim.token_rows:
            raise ConfigError("optim.token_rows trains embedding rows, which are frozen with LoRA "
                              "(model.lora_rank > 0): use one or the other")
    unknown = sorted(set(t.report_to) - set(allowed["train.report_to"]))
    if unknown:
        raise ConfigError(f"train.report_to: unknown {unknown}; choose among "
                          f"{', '.join(allowed['train.report_to'])} (or [])")
    if not g.reward:
        raise ConfigError("grpo.reward is empty: name at least one reward")
    from tooln1_jax.rewards import plugins  # the reward names are strings here; their rules are the package's

    for spec in g.reward:
        if not plugins.is_builtin(spec) and not plugins.is_plugin_spec(spec):
            raise ConfigError(f"grpo.reward {spec!r} is neither a built-in ({', '.join(allowed['grpo.reward'])}) "
                              "nor a plug-in 'package.module:function'")
    if g.reward_weights and len(g.reward_weights) != len(g.reward):
        raise ConfigError(f"grpo.reward_weights has {len(g.reward_weights)} values for {len(g.reward)} rewards "
                          f"{list(g.reward)}")
    if not all(math.isfinite(w) for w in g.reward_weights):
        raise ConfigError(f"grpo.reward_weights must be finite, got {list(g.reward_weights)}")


def dump(config: RunConfig, path: str | Path) -> None:
    files.write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
