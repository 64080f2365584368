"""Orbax checkpoints of a run: parameters, optimizer state, and a JSON item with the step, the data-iterator
state, the RNG key and the model config. Saved every N steps (asynchronously where available), the last K kept.

Layout: RUN_DIR/checkpoints/<step>/{params, opt_state, meta}. `load_model` reads just the parameters back from a
run directory or one step directory, for evaluation, generation and `tooln1 export` (LoRA adapters merged in).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import jax
import orbax.checkpoint as ocp

from tooln1_jax import assets, parallel, paths
from tooln1_jax.models import lora, qwen2, weights
from tooln1_jax.models.qwen2 import Qwen2Config

log = logging.getLogger(__name__)
CHECKPOINT_DIR = "checkpoints"
TMP_PATTERN = "*.orbax-checkpoint-tmp*"  # "<step>.orbax-checkpoint-tmp[-<timestamp>]"


def _abstract(tree):
    """ShapeDtypeStructs with the arrays' shardings: orbax restores straight onto them."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def model_config_dict(config: Qwen2Config) -> dict:
    return {"hf": config.to_hf(), "dtype": config.dtype, "param_dtype": config.param_dtype, "remat": config.remat,
            "lora": {"rank": config.lora_rank, "alpha": config.lora_alpha, "targets": list(config.lora_targets)}}


def model_config_from_dict(d: dict, source: str) -> Qwen2Config:
    adapters = d.get("lora") or {"rank": 0}
    lora_settings = {"lora_rank": adapters["rank"]}
    if adapters["rank"]:
        lora_settings.update(lora_alpha=adapters["alpha"], lora_targets=tuple(adapters["targets"]))
    return Qwen2Config.from_hf(d["hf"], source=source, dtype=d["dtype"], param_dtype=d["param_dtype"],
                               remat=d.get("remat", False), **lora_settings)


class Checkpoints:
    """Save and restore a run's training state under RUN_DIR/checkpoints."""

    def __init__(self, run_dir: str | Path, *, keep: int = 2, async_save: bool = True, read_only: bool = False):
        run_dir = paths.path(run_dir)  # orbax writes to gs:// itself (tensorstore for arrays, epath for the rest)
        self.directory = (run_dir if paths.is_remote(run_dir) else run_dir.absolute()) / CHECKPOINT_DIR
        if not read_only and jax.process_index() == 0:
            remove_unfinished(self.directory)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                               create=not read_only, read_only=read_only)
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("params", "opt_state", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, params, opt_state, meta: dict) -> None:
        self.manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                                        opt_state=ocp.args.StandardSave(opt_state),
                                                        meta=ocp.args.JsonSave(meta)))

    def meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, step: int, params_like, opt_state_like):
        """(params, opt_state, meta) of `step`, placed like the given trees (arrays or ShapeDtypeStructs)."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(_abstract(params_like)),
            opt_state=ocp.args.StandardRestore(_abstract(opt_state_like)),
            meta=ocp.args.JsonRestore()))
        return restored["params"], restored["opt_state"], restored["meta"]

    def restore_params(self, step: int, params_like):
        restored = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(_abstract(params_like))))
        return restored["params"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def remove_unfinished(directory: Path) -> list[Path]:
    """Delete the temporary directories of saves that never finished (a killed run leaves a full copy of the
    model and optimizer state there; orbax never reads or removes them). Returns what was removed."""
    stale = sorted(directory.glob(TMP_PATTERN)) if directory.is_dir() else []
    for path in stale:
        log.warning("removing the unfinished checkpoint %s", path)
        if paths.is_remote(path):
            path.rmtree(missing_ok=True)
        else:
            shutil.rmtree(path, ignore_errors=True)
    return stale


def check_compatible(saved: dict, config: Qwen2Config, where: str) -> None:
    """A clear error when a checkpoint was written for another model shape."""
    ours, theirs = config.to_hf(), saved["hf"]
    keys = ("model_type", "attention_bias", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "head_dim", "tie_word_embeddings")
    diffs = [f"{k}: checkpoint {theirs.get(k)!r}, config {ours.get(k)!r}" for k in keys if theirs.get(k) != ours.get(k)]
    if diffs:
        raise ValueError(f"{where}: the checkpoint is of another model shape ({'; '.join(diffs)})")
    saved_lora = saved.get("lora") or {"rank": 0}
    ours_lora = model_config_dict(config)["lora"]
    if saved_lora["rank"] != ours_lora["rank"] or (ours_lora["rank"] and saved_lora != ours_lora):
        raise ValueError(f"{where}: the checkpoint's LoRA settings {saved_lora} differ from the config's {ours_lora}")
    if saved.get("param_dtype") != config.param_dtype:
        raise ValueError(f"{where}: the checkpoint holds {saved.get('param_dtype')} parameters, the config wants "
                         f"{config.param_dtype}")


def _resolve(path: str | Path) -> tuple[Path, int | None]:
    """(run directory, step or None for the latest) from a run directory or a step directory inside it."""
    p = paths.path(path)
    p = p if paths.is_remote(p) else p.absolute()
    if (p / CHECKPOINT_DIR).is_dir():
        return p, None
    if p.parent.name == CHECKPOINT_DIR and p.name.isdigit():
        return p.parent.parent, int(p.name)
    raise FileNotFoundError(f"{path}: not a run directory (no {CHECKPOINT_DIR}/) or a checkpoint step directory")


def load_model(path: str | Path, mesh=None, dtype: str | None = None):
    """(config, params) from a run directory (latest checkpoint), a checkpoint step directory, or anything
    `weights.load` takes (HF directory, hub id, .gguf)."""
    try:
        run_dir, step = _resolve(path)
    except FileNotFoundError:
        config, params = weights.load(path, mesh=mesh, dtype=dtype)
    else:
        config, params = _restore_model(run_dir, step, mesh, dtype)
    if warning := parallel.cpu_warning(config.num_params):
        log.warning("%s", warning)
    return config, params


def _restore_model(run_dir: Path, step: int | None, mesh, dtype: str | None):
    checkpoints = Checkpoints(run_dir, read_only=True)
    step = checkpoints.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"{run_dir / CHECKPOINT_DIR}: no finished checkpoint")
    config = model_config_from_dict(checkpoints.meta(step)["model"], f"{run_dir} step {step}")
    if dtype:
        config = config.replace(dtype=dtype)
    shapes, logical = qwen2.abstract_params(config)
    shardings = parallel.shardings(shapes, logical, mesh or parallel.single_device_mesh())
    like = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
    params = checkpoints.restore_params(step, like)
    checkpoints.close()
    log.info("loaded %s step %d", run_dir, step)
    if config.lora_rank:
        log.info("LoRA adapters (rank %d) merged into the weights", config.lora_rank)
        return lora.merge(config, params)
    return config, params


def export_hf(path: str | Path, out: str | Path) -> Path:
    """`tooln1 export`: the parameters of a checkpoint as a Hugging Face directory."""
    config, params = load_model(path)
    target = weights.save_hf(config, params, out)
    assets.copy_tokenizer(path, target)
    print(f"wrote {target}")
    return target
