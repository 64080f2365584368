"""What GRPO and SFT runs share: mesh, tokenizer, data, model, optimizer, checkpoints, metrics, greedy
validation, and the loop (step -> validate -> log -> checkpoint) with exact resume; the persistent compilation
cache, and the count of each step's compilations (`compiles/...` in metrics.jsonl)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import logging.handlers
import queue
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from tooln1_jax import assets, checkpoint, files, logs, parallel, paths
from tooln1_jax.config import ConfigError, RunConfig, dump, validate
from tooln1_jax.data import loading
from tooln1_jax.data.pipeline import PromptLoader
from tooln1_jax.models import lora, presets, qwen2, weights
from tooln1_jax.models.qwen2 import Qwen2Config
from tooln1_jax.rewards import toolcall
from tooln1_jax.rollout import sampler
from tooln1_jax.train import preemption
from tooln1_jax.train.metrics import METRICS_FILE, MetricsLogger, plot
from tooln1_jax.train.step import StepFunctions, make_optimizer

log = logging.getLogger(__name__)


def build_config(cfg: RunConfig) -> Qwen2Config:
    """The model config alone (reads only config.json or the GGUF header), to check things before loading."""
    m = cfg.model
    runtime = {"dtype": weights.default_dtype() if m.dtype == "auto" else m.dtype, "param_dtype": m.param_dtype,
               "remat": m.remat, "attention": m.attention, "head": m.head, "lora_rank": m.lora_rank,
               "lora_alpha": m.lora_alpha, "lora_targets": tuple(m.lora_targets)}
    if m.path:
        source = weights.open_source(m.path)
        return Qwen2Config.from_hf(source.hf_config, source=str(getattr(source, "hf_config_path", m.path)), **runtime)
    if m.preset:
        return presets.preset(m.preset, **runtime)
    return Qwen2Config(vocab_size=m.vocab_size, hidden_size=m.hidden_size, intermediate_size=m.intermediate_size,
                       num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads,
                       num_key_value_heads=m.num_kv_heads, tie_word_embeddings=m.tie_word_embeddings, **runtime)


def build_params(cfg: RunConfig, config: Qwen2Config, mesh):
    """Load the configured weights, or initialise the configured shape, straight onto the mesh (with fresh LoRA
    adapters when the config has them)."""
    if cfg.model.path:
        base = weights.load_params(config.replace(lora_rank=0), weights.open_source(cfg.model.path), mesh)
        if not config.lora_rank:
            return base
        return lora.add_adapters(config, base, jax.random.key(cfg.model.init_seed), mesh)
    shapes, logical = qwen2.abstract_params(config)
    shardings = parallel.shardings(shapes, logical, mesh)
    init = jax.jit(lambda key: qwen2.init_params(config, key), out_shardings=shardings)
    return init(jax.random.key(cfg.model.init_seed))


def token_row_ids(tokenizer, tokens: Sequence[str], vocab_size: int) -> tuple[int, ...]:
    """The ids of `optim.token_rows` (tokens of the tokenizer's vocabulary)."""
    if not tokens:
        return ()
    vocab = tokenizer.get_vocab()
    for token in tokens:
        if token not in vocab:
            raise ConfigError(f"optim.token_rows: {token!r} is not a token of the tokenizer ({tokenizer.name_or_path})")
        if vocab[token] >= vocab_size:
            raise ConfigError(f"optim.token_rows: {token!r} has id {vocab[token]}, beyond the model's vocabulary "
                              f"of {vocab_size}")
    return tuple(vocab[token] for token in tokens)


LOG_FILE = "run.log"


def steps_from_epochs(cfg: RunConfig, num_records: int, num_batches: int) -> RunConfig:
    """`cfg` (train.steps null) with train.steps = the whole batches `data.num_epochs` passes over `num_records`
    hold; says so."""
    if num_batches < 1:
        raise ConfigError(f"data.num_epochs {cfg.data.num_epochs} over {num_records} training records does not fill "
                          f"one batch of train.batch_size {cfg.train.batch_size}")
    log.info("data.num_epochs %d over %d training records, %d a step: %d steps", cfg.data.num_epochs,
             num_records, cfg.train.batch_size, num_batches)
    return cfg.replace(train=dataclasses.replace(cfg.train, steps=num_batches))


class _LogFile:
    """Everything logged at INFO and above in this process also goes to `path` (appended: a resumed run adds; in an
    object store the file is written again at most every 30 s and when the run closes). A background thread does the
    writing: a storage client that logs from its own I/O thread while the file is being written would otherwise wait
    on the handler's lock held by the very call waiting for it."""

    def __init__(self, path):
        self.file = files.AppendFile(path, min_interval=30.0)
        self.writer = logging.StreamHandler(self.file)
        self.writer.setFormatter(logging.Formatter(logs.LOG_FORMAT))
        records = queue.SimpleQueue()
        self.handler = logging.handlers.QueueHandler(records)
        self.handler.setLevel(logging.INFO)
        self.listener = logging.handlers.QueueListener(records, self.writer)
        self.listener.start()
        root = logging.getLogger()
        root.addHandler(self.handler)
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)

    def close(self) -> None:
        logging.getLogger().removeHandler(self.handler)
        self.listener.stop()  # writes what is queued
        self.writer.close()
        self.file.close()


def banner(run: "TrainingRun") -> str:
    """Where and what a run is: version, backend, devices, processes, mesh, parameter count, model and data."""
    from tooln1_jax import __version__

    devices = jax.devices()
    kinds = sorted({d.device_kind for d in devices})
    mesh = " ".join(f"{name}={size}" for name, size in run.mesh.shape.items())
    m = run.cfg.model
    params = f"{lora.count(run.params):,} parameters"
    trainable = lora.partition(run.params)[0]
    if trainable is not run.params:
        params += (f" of which {lora.count(trainable):,} train: LoRA rank {m.lora_rank}, alpha {m.lora_alpha:g} on "
                   f"{', '.join(m.lora_targets)}")
    return (f"tooln1-jax {__version__} {run.name}: jax {jax.__version__}, backend {jax.default_backend()}, "
            f"{len(devices)} device(s) ({', '.join(kinds)}), {jax.process_count()} process(es), mesh {mesh}; "
            f"model {m.path or m.preset or 'random init'} ({params}, {m.param_dtype} weights, "
            f"{run.model_config.dtype} compute); {len(run.train_records)} training records; run dir {run.run_dir}")


def decode_replies(tokenizer, rollout: sampler.Rollout, stop_ids) -> tuple[list[str], list[list[int]]]:
    """Reply texts (stop token excluded, special tokens kept) and their token ids."""
    ids = sampler.reply_ids(rollout, stop_ids)
    return tokenizer.batch_decode(ids, skip_special_tokens=False), ids


# jax.monitoring events: a program built for a jit cache miss (compiled, or loaded from the persistent cache), and
# a load from the persistent cache
PROGRAM_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"
_programs = {"built": 0, "loaded": 0}  # in this process, since `count_compilations` was first called


def _on_event(event: str, *duration_secs, **kwargs) -> None:
    """The listener of both plain and duration events (which also pass their seconds)."""
    if event == PROGRAM_EVENT:
        _programs["built"] += 1
    elif event == CACHE_HIT_EVENT:
        _programs["loaded"] += 1


@functools.cache
def count_compilations() -> None:
    """Count programs from now on (once per process: jax.monitoring listeners cannot be taken back)."""
    jax.monitoring.register_event_duration_secs_listener(_on_event)
    jax.monitoring.register_event_listener(_on_event)


def compilations() -> tuple[int, int]:
    """(XLA compilations, programs loaded from the persistent compilation cache) in this process so far."""
    return _programs["built"] - _programs["loaded"], _programs["loaded"]


class CompileLog:
    """One step's compilations by phase (`with log.phase("update"): ...` adds the compilations made inside), and
    the programs the persistent cache gave instead of a compilation since the log was made."""

    def __init__(self, phases: Sequence[str] = ()):
        count_compilations()
        self.counts: dict[str, int] = dict.fromkeys(phases, 0)
        self._loaded_before = compilations()[1]

    @contextlib.contextmanager
    def phase(self, name: str):
        start = compilations()[0]
        try:
            yield
        finally:
            self.counts[name] = self.counts.get(name, 0) + compilations()[0] - start

    def metrics(self) -> dict[str, int]:
        return {**{f"compiles/{name}": n for name, n in self.counts.items()},
                "compiles/loaded": compilations()[1] - self._loaded_before}


def use_compilation_cache(directory: str | None) -> None:
    """Keep compiled programs in `directory` (local or gs://; None or "": no persistent cache). JAX makes its cache
    object once, at the first compilation after the directory is set; a changed directory starts it again."""
    wanted = str(paths.path(directory)) if directory else None
    if jax.config.jax_compilation_cache_dir != wanted:
        from jax.experimental.compilation_cache import compilation_cache

        jax.config.update("jax_compilation_cache_dir", wanted)
        compilation_cache.reset_cache()


class StepAbandoned(Exception):
    """Raised inside a step, before it changes any state, when the run is asked to stop."""


@dataclasses.dataclass
class StepResult:
    metrics: dict
    samples: list[dict]


class TrainingRun:
    """Set-up and loop shared by `GRPOTrainer` and `SFTTrainer`; they add `train_step()`."""

    name = "run"
    compile_phases = ("update", "total")  # the `compiles/...` metrics of every step
    progress_keys = ("loss",)  # shown on the progress bar
    plot_keys = ("loss",)  # plotted into `plot_file` when the run ends
    plot_file = "loss.png"
    saved_step: int | None = None  # the step of the last checkpoint written or restored
    interrupted: str | None = None  # the signal that stopped `run` early (SIGTERM, SIGINT), else None
    _stop: preemption.StopRequests | None = None
    _log_file: _LogFile | None = None

    def __init__(self, cfg: RunConfig, *, run_dir: str | Path | None = None, train_records: list[dict] | None = None,
                 eval_records: list[dict] | None = None, tokenizer=None, resume: bool = False):
        validate(cfg)  # ranges and cross-field rules, also for configs built in code
        use_compilation_cache(cfg.train.compilation_cache_dir)  # before this run compiles anything
        self.compiles = CompileLog(self.compile_phases)
        self.cfg = cfg
        self.run_dir = paths.path(run_dir or cfg.train.run_dir)  # a local directory or gs://bucket/dir
        t = cfg.train
        parallel.initialize(cfg.mesh.coordinator_address, cfg.mesh.num_processes, cfg.mesh.process_id)
        self.mesh = parallel.make_mesh({"data": cfg.mesh.data, "fsdp": cfg.mesh.fsdp, "tensor": cfg.mesh.tensor})
        parallel.check_batch_layout(self.mesh)
        self.check_batch_fits_mesh()
        self.is_main = jax.process_index() == 0
        self.tokenizer = tokenizer or assets.load_tokenizer(cfg.data.tokenizer or cfg.model.path)
        self.stop_ids = tuple(sampler.DEFAULT_STOP_IDS)

        # data first: a bad path fails before the model is built
        load = lambda split: loading.load_records(  # noqa: E731
            cfg.data.train if split == "train" else cfg.data.test, split, self.tokenizer,
            max_prompt_tokens=cfg.data.max_prompt_tokens, native_tools=cfg.data.native_tools, seed=t.seed)
        self.train_records = self.prepare_records(train_records if train_records is not None else load("train"))
        self.eval_records = eval_records if eval_records is not None else (
            load("test") if cfg.data.test and t.eval_every else [])
        shard_index, shard_count = self.loader_shard()
        given = cfg  # what config.yaml records: rerun (or resumed) as it was given, it makes the same run
        # an explicit train.steps wins: the records repeat as the steps need; else the epochs set the length
        # (verl's total_training_steps)
        num_epochs = cfg.data.num_epochs if t.steps is None else None
        self.loader = PromptLoader(self.train_records, batch_size=t.batch_size // shard_count, seed=t.seed,
                                   shuffle=cfg.data.shuffle, num_epochs=num_epochs,
                                   shard_index=shard_index, shard_count=shard_count)
        if num_epochs is not None:
            cfg = self.cfg = steps_from_epochs(cfg, len(self.train_records), self.loader.num_batches)

        self.checkpoints = checkpoint.Checkpoints(self.run_dir, keep=cfg.checkpoint.keep,
                                                  async_save=cfg.checkpoint.async_save)
        latest = self.checkpoints.latest_step()  # where a resumed run continues (None: from the start)
        if not resume and latest is not None:
            raise FileExistsError(f"{self.run_dir} already holds checkpoints: pass --resume to continue that run, "
                                  "or choose another --run-dir")
        if not resume and (self.run_dir / METRICS_FILE).is_file() and (self.run_dir / METRICS_FILE).read_text():
            raise FileExistsError(f"{self.run_dir} holds the metrics of an earlier run but no checkpoint (stopped "
                                  "before its first one?): pass --resume to start it again from step 0 in place, "
                                  "or choose another --run-dir")
        self.model_config = build_config(cfg)
        if latest is not None:  # before any long work: is this checkpoint ours?
            checkpoint.check_compatible(self.checkpoints.meta(latest)["model"], self.model_config,
                                        str(self.checkpoints.directory / str(latest)))
        self.params = build_params(cfg, self.model_config, self.mesh)
        self.token_row_ids = token_row_ids(self.tokenizer, cfg.optim.token_rows, self.model_config.vocab_size)
        self.optimizer = make_optimizer(cfg.optim, self.total_updates(), self.token_row_ids)
        self.steps = StepFunctions(self.model_config, self.optimizer, self.mesh, self.params)
        self.opt_state = self.steps.init_opt_state(self.params)
        self.base_key = jax.random.key(t.seed)
        self.step = 0
        self.setup()
        if latest is not None:
            self.restore(latest)
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            dump(given, self.run_dir / "config.yaml")
            self._log_file = _LogFile(self.run_dir / LOG_FILE)
        if latest is not None:
            log.info("resumed %s at step %d", self.run_dir, self.step)
        wandb = ({"project": t.wandb_project, "name": self.run_dir.name, "config": cfg.to_dict()}
                 if "wandb" in t.report_to else None)
        self.metrics = MetricsLogger(self.run_dir, tensorboard="tensorboard" in t.report_to, wandb=wandb,
                                     resume_step=self.step if resume else None) if self.is_main else None
        log.info("%s", banner(self))
        if warning := parallel.cpu_warning(self.model_config.num_params):
            log.warning("%s", warning)

    # -- hooks for the subclasses ------------------------------------------------------------------------------
    def prepare_records(self, records: list[dict]) -> list[dict]:
        return records

    def setup(self) -> None:
        """Extra state built after the model (the reference model, the reward function, ...)."""

    def loader_shard(self) -> tuple[int, int]:
        """(index, count) of this host's share of each batch the loader serves (default: one slice per host)."""
        return jax.process_index(), jax.process_count()

    def sequences_per_update(self) -> int:
        raise NotImplementedError

    def total_updates(self) -> int:
        raise NotImplementedError

    def train_step(self) -> StepResult:
        raise NotImplementedError

    # -- checks and state --------------------------------------------------------------------------------------
    def check_batch_fits_mesh(self):
        t = self.cfg.train
        multiple = parallel.batch_size_multiple(self.mesh)
        for name, rows in (("train.micro_batch_rows", t.micro_batch_rows),
                           ("sequences per optimizer step", self.sequences_per_update())):
            if rows % multiple:
                raise ValueError(f"{name} = {rows} does not divide over the {multiple} devices of the mesh's "
                                 f"batch axes (data x fsdp of {dict(self.mesh.shape)})")
        if t.mini_batch_size % jax.process_count():
            raise ValueError(f"train.mini_batch_size {t.mini_batch_size} does not divide over "
                             f"{jax.process_count()} hosts")

    def meta(self) -> dict:
        return {"step": self.step, "loader": self.loader.get_state(),
                "rng": np.asarray(jax.random.key_data(self.base_key)).tolist(),
                "model": checkpoint.model_config_dict(self.model_config), "config": self.cfg.to_dict()}

    def restore(self, step: int):
        self.params, self.opt_state, meta = self.checkpoints.restore(step, self.params, self.opt_state)
        self.saved_step = step
        self.loader.set_state(meta["loader"])
        self.base_key = jax.random.wrap_key_data(jnp.asarray(meta["rng"], jnp.uint32))
        self.step = meta["step"]

    def save(self):
        self.checkpoints.save(self.step, self.params, self.opt_state, self.meta())
        self.saved_step = self.step

    def abandon_if_stopping(self):
        """Called inside a step before its first state change: stop here when a signal came (a collective)."""
        if self._stop is not None and self._stop.requested(self.step):
            raise StepAbandoned

    def is_logged(self, step: int) -> bool:
        """Whether the metrics of `step` go to metrics.jsonl: every train.log_every steps, and the last step's."""
        return step % self.cfg.train.log_every == 0 or step == self.cfg.train.steps

    def micro_rows(self) -> int:
        """Packed rows per forward/backward pass: `train.micro_batch_rows`, or one per device of the batch axes."""
        return self.cfg.train.micro_batch_rows or parallel.batch_size_multiple(self.mesh)

    def global_batch(self, local: np.ndarray) -> jax.Array:
        """A batch-sharded global array from this host's rows."""
        return jax.make_array_from_process_local_data(parallel.batch_sharding(self.mesh, local.ndim), local)

    def all_rows(self, local: np.ndarray) -> np.ndarray:
        """Every host's rows of a per-row host array (for metrics)."""
        if jax.process_count() == 1:
            return local
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(local, tiled=True))

    # -- validation and the loop -------------------------------------------------------------------------------
    def validate(self) -> dict:
        """Greedy replies on held-out records (each host its share): mean binary reward, exact-match and format
        rates."""
        per_host = min(self.cfg.train.eval_size, len(self.eval_records)) // jax.process_count()
        if not per_host:
            return {}
        records = self.eval_records[jax.process_index() * per_host:(jax.process_index() + 1) * per_host]
        out = sampler.generate(self.model_config, self.params, [r["prompt_ids"] for r in records],
                               max_new_tokens=self.cfg.rollout.max_new_tokens, temperature=0.0,
                               stop_ids=self.stop_ids, mesh=self.mesh)
        replies, _ = decode_replies(self.tokenizer, out, self.stop_ids)
        # (binary reward, exact match, well-formed) per reply
        scores = self.all_rows(np.array([toolcall.score_details(reply, rec["answer"])
                                         for reply, rec in zip(replies, records)], np.float32))
        return {"val/reward": float(scores[:, 0].mean()), "val/exact_match": float(scores[:, 1].mean()),
                "val/format_ok": float(scores[:, 2].mean())}

    def run(self, progress: bool = True) -> list[dict]:
        bar = logs.progress(self.cfg.train.steps, self.name, "step", initial=self.step,
                            disable=not (progress and self.is_main))
        with preemption.StopRequests() as self._stop:
            history = self._loop(bar)
        self._stop = None
        bar.close()
        self.finish()
        return history

    def _loop(self, bar) -> list[dict]:
        """Steps until train.steps, or until a signal: then a checkpoint of the last finished step (see preemption)."""
        t, c = self.cfg.train, self.cfg.checkpoint
        history = []
        while self.step < t.steps:
            loader_state = self.loader.get_state()
            self.compiles = CompileLog(self.compile_phases)
            with self.compiles.phase("total"):  # the step's compilations, its validation's included
                try:
                    result = self.train_step()
                except StepAbandoned:
                    self.loader.set_state(loader_state)
                    self._stopped()
                    return history
                metrics = result.metrics
                if t.eval_every and self.step % t.eval_every == 0:
                    metrics.update(self.validate())
            metrics.update(self.compiles.metrics())
            if self.is_main:
                if self.is_logged(self.step):
                    self.metrics.log(self.step, metrics)
                if t.sample_every and self.step % t.sample_every == 0 and result.samples:
                    self.metrics.log_samples(self.step, result.samples)
            if self.step % c.every == 0 or self.step == t.steps:
                self.save()
            history.append(metrics)
            bar.update(1)
            bar.set_postfix({k: f"{metrics[k]:.3g}" for k in self.progress_keys if k in metrics})
            if self.step < t.steps and self._stop.requested(self.step):
                self._stopped()
                return history
        return history

    def _stopped(self) -> None:
        self.interrupted = self._stop.name
        if self.step > 0 and self.saved_step != self.step:
            self.save()
        log.warning("%s: stopped at step %d (checkpoint saved); continue with --resume", self.interrupted, self.step)

    def finish(self):
        self.checkpoints.wait()
        if self.is_main and self.metrics is not None:
            self.metrics.close()
            try:
                plot(self.run_dir, self.run_dir / self.plot_file, keys=self.plot_keys)
            except (KeyError, ValueError) as e:  # e.g. no steps logged
                log.warning("no plot: %s", e)

    def close(self):
        self.checkpoints.close()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
