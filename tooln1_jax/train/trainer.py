"""The GRPO loop: draw prompts -> sample G replies each -> score -> old/reference log-probs -> one optimizer step
per mini-batch. Each step is a short sequence of named calls; the math lives in `grpo`, the jitted work in
`step`, the sampling in `rollout.sampler`, the set-up and loop in `run`.

The training passes use the prefix-shared packed layout (`packing.py`): each prompt once, then its G replies;
`train.micro_batch_rows` packed rows per forward/backward pass. The first mini-batch of a step takes its old
log-probs from the update's own forward (stop-gradient: nothing has changed the policy since it sampled) instead
of a separate pass; the entropy is computed only on steps that are logged. Packed shapes are bucketed (`packing`,
`shapes.ladder`), so the update and log-prob passes compile a handful of programs however reply lengths vary;
`compiles/rollout`, `compiles/logprobs`, `compiles/update` and `compiles/total` count each step's compilations
(`compiles/loaded`: the programs the persistent compilation cache gave instead).
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np

from tooln1_jax import parallel
from tooln1_jax.models import lora
from tooln1_jax.rewards import plugins
from tooln1_jax.rollout import sampler
from tooln1_jax.train import grpo, packing, sft
from tooln1_jax.train.run import StepResult, TrainingRun, decode_replies
from tooln1_jax.train.step import PACKED_KEYS, GRPOSettings

# reward_fn(records, replies, reply_token_ids) -> (rewards [N], extra per-row metrics {name: [N]})
RewardFn = Callable[[Sequence[dict], Sequence[str], Sequence[Sequence[int]]], tuple[np.ndarray, dict]]


def _worker_context() -> multiprocessing.context.BaseContext:
    """Fresh worker processes: forking a process whose JAX runtime has started threads can deadlock the child."""
    return multiprocessing.get_context("forkserver" if "forkserver" in multiprocessing.get_all_start_methods()
                                       else "spawn")


class Rewards:
    """The rewards of `grpo.reward` (built-ins and plug-ins, `rewards/plugins.py`) summed with their weights, plus
    the exact-match and format rates of the Tool-N1 check, and each function's values when there are several.
    With `workers`, chunks of replies are scored in that many processes (they import only the jax-free rewards
    modules and the plug-ins)."""

    CHUNK = 64

    def __init__(self, specs: Sequence[str], weights: Sequence[float] = (), workers: int = 0, tokenizer=None):
        self.specs, self.weights = tuple(specs), tuple(weights) or (1.0,) * len(specs)
        for spec in self.specs:
            plugins.load(spec)  # an import error stops the run here, before any rollout
        self.needs_prompts = not all(plugins.is_builtin(s) for s in self.specs)
        self.tokenizer = tokenizer
        self._pool = ProcessPoolExecutor(workers, mp_context=_worker_context()) if workers > 0 else None

    def __call__(self, records, replies, reply_ids):
        prompts = self._prompt_texts(records) if self.needs_prompts else [""] * len(replies)
        columns = {k: [r.get(k) for r in records] for k in records[0] if k not in ("prompt_ids", "target_ids")}
        starts = range(0, len(replies), self.CHUNK)
        chunks = [(self.specs, self.weights, prompts[i:i + self.CHUNK], replies[i:i + self.CHUNK],
                   {k: v[i:i + self.CHUNK] for k, v in columns.items()}) for i in starts]
        results = list(self._pool.map(plugins.score_chunk, *zip(*chunks)) if self._pool and chunks
                       else (plugins.score_chunk(*c) for c in chunks))
        column = lambda i: np.array([x for r in results for x in r[i]], np.float32)  # noqa: E731  over the chunks
        extra = {"exact_match": column(2), "format_ok": column(3)}
        if len(self.specs) > 1:  # each function's mean over the replies it applies to
            for spec in self.specs:
                extra[spec] = np.array([np.nan if x is None else x for r in results for x in r[1][spec]], np.float32)
        return column(0), extra

    def _prompt_texts(self, records) -> list[str]:
        unique = {id(r): r for r in records}  # a prompt's G rows share one record object
        texts = {key: self.tokenizer.decode(r["prompt_ids"]) for key, r in unique.items()}
        return [texts[id(r)] for r in records]

    def close(self):
        if self._pool:
            self._pool.shutdown()


class GRPOTrainer(TrainingRun):
    name = "grpo"
    progress_keys = ("reward/mean", "kl")
    plot_keys = ("reward/mean", "kl")
    plot_file = "reward.png"
    compile_phases = ("rollout", "logprobs", "update", "total")

    def __init__(self, cfg, *, reward_fn: RewardFn | None = None, **kwargs):
        self._reward_fn = reward_fn
        if reward_fn is None:
            for spec in cfg.grpo.reward:
                plugins.load(spec)  # a plug-in that does not import stops the run before the model loads
        super().__init__(cfg, **kwargs)
        if self.metrics is not None and self.step == 0:
            self.log_warm_start()

    def sequences_per_update(self) -> int:
        return self.cfg.train.mini_batch_size * self.cfg.rollout.num_generations

    def total_updates(self) -> int:
        t = self.cfg.train
        return t.steps * (t.batch_size // t.mini_batch_size)

    def loader_shard(self) -> tuple[int, int]:
        return 0, 1  # every host reads the global batch and takes its part of each mini-batch (`local_positions`)

    def local_positions(self, batch_size: int) -> list[int]:
        """This host's prompts: its slice of every mini-batch, in mini-batch order. The hosts' rows of mini-batch
        k laid end to end are then the global mini-batch k, as in a single-process run."""
        mb, hosts, host = self.cfg.train.mini_batch_size, jax.process_count(), jax.process_index()
        per = mb // hosts
        return [k * mb + host * per + j for k in range(batch_size // mb) for j in range(per)]

    def setup(self):
        cfg = self.cfg
        # the warm start runs again on --resume (deterministic): it rebuilds the KL reference; restore() then
        # brings back the policy and optimizer of the checkpoint
        self.warm_start_history = sft.warm_start(self) if cfg.sft.warm_start_steps else []
        self.warm_start_val = self.validate() if self.warm_start_history and cfg.train.eval_every else {}
        self.ref_params = self.ref_adapters = None
        if cfg.grpo.beta > 0 and self.model_config.lora_rank:  # the reference shares the frozen base weights
            self.ref_adapters = jax.tree.map(jnp.copy, lora.partition(self.params)[0])
        elif cfg.grpo.beta > 0:
            dtype = self.model_config.dtype if cfg.grpo.ref_dtype == "compute" else None
            self.ref_params = jax.jit(lambda p: jax.tree.map(lambda x: x.astype(dtype or x.dtype), p),
                                      out_shardings=self.steps.param_shardings)(self.params)
        self.reward_fn = self._reward_fn or Rewards(cfg.grpo.reward, cfg.grpo.reward_weights,
                                                    cfg.train.reward_workers, self.tokenizer)
        self.settings = GRPOSettings(temperature=cfg.rollout.temperature, max_len=cfg.rollout.max_new_tokens,
                                     micro_batch_size=self.micro_rows(), grpo=cfg.grpo)

    def reference_params(self):
        """The frozen reference policy (the one GRPO starts from, after any warm start), or None without a KL term:
        a copy of the weights, or with LoRA the frozen base with a copy of the starting adapters (rebuilt each step:
        the updates donate the weights)."""
        if self.ref_adapters is not None:
            return lora.combine(self.ref_adapters, lora.partition(self.params)[1])
        return self.ref_params

    def log_warm_start(self):
        """The warm start's steps as step-0 lines of metrics.jsonl (keys `warm_start/...`), its last line with the
        greedy validation of the warm-started policy."""
        for i, m in enumerate(self.warm_start_history, 1):
            line = {"warm_start/step": i, **{f"warm_start/{k}": v for k, v in m.items()}}
            self.metrics.log(0, {**line, **self.warm_start_val} if i == len(self.warm_start_history) else line)

    # -- the parts of a step -----------------------------------------------------------------------------------
    def rollout(self, records: list[dict], positions: list[int]) -> sampler.Rollout:
        """G samples per prompt, `rollout.prompts_per_call` prompts per sampler call (bounds the KV cache); a
        prompt's samples depend only on the step and its position in the global batch."""
        r = self.cfg.rollout
        chunk = max(1, r.prompts_per_call // jax.process_count()) if r.prompts_per_call else len(records)
        weights = sampler.prepare(self.model_config, self.params, dtype=r.inference_dtype or None,
                                  fsdp=r.inference_fsdp, mesh=self.mesh)  # once per step
        parts = [sampler.generate(self.model_config, weights, [rec["prompt_ids"] for rec in records[i:i + chunk]],
                                  num_samples=r.num_generations, max_new_tokens=r.max_new_tokens,
                                  temperature=r.temperature, top_p=r.top_p, top_k=r.top_k, stop_ids=self.stop_ids,
                                  rng=jax.random.fold_in(self.base_key, self.step), mesh=self.mesh,
                                  prompt_seeds=positions[i:i + chunk], num_slots=r.num_slots or None,
                                  chunk_steps=r.chunk_steps)
                 for i in range(0, len(records), chunk)]
        return sampler.concatenate(parts)

    def advantages(self, rewards: np.ndarray) -> np.ndarray:
        g = self.cfg.rollout.num_generations
        return np.asarray(grpo.group_advantages(jnp.asarray(rewards), g, scale_by_std=self.cfg.grpo.scale_rewards))

    def minibatches(self, records, generated_ids, advantages) -> list[dict]:
        """One packed device batch per mini-batch (this host's rows of it), with old and reference log-probs, all
        computed before the first update: "old" is the policy that sampled. The replies keep their stop token:
        ending the reply is an action the policy learns too. The first mini-batch gets no old log-prob pass: it is
        updated before any other, by the policy that sampled it, so its update takes its own forward's log-probs
        (and entropy, when logged); the later ones need the sampling policy's, computed here."""
        t, r = self.cfg.train, self.cfg.rollout
        g, hosts = r.num_generations, jax.process_count()
        per = t.mini_batch_size // hosts  # this host's prompts per mini-batch
        log_entropy = self.is_logged(self.step + 1)  # the coming step is logged: its entropy is wanted
        batches, self.layout_stats = [], {"computed": 0, "useful": 0}
        reference = self.reference_params()
        width = parallel.global_max(packing.reply_width_for(max(1, max(map(len, generated_ids))), r.max_new_tokens))
        longest_group = self.cfg.data.max_prompt_tokens + g * r.max_new_tokens  # the worst case: caps row lengths
        for start in range(0, len(records), per):
            recs = records[start:start + per]
            replies = [generated_ids[(start + i) * g:(start + i + 1) * g] for i in range(len(recs))]
            packed = packing.pack_groups([rec["prompt_ids"] for rec in recs], replies, budget=t.pack_tokens,
                                         rows_multiple=self.micro_rows() // hosts, reply_width=width,
                                         max_length=longest_group)
            packed = packed.pad_to(*(parallel.global_max(n) for n in packed.shape))
            self.layout_stats["computed"] += packed.computed_tokens * hosts
            self.layout_stats["useful"] += int(self.all_rows(np.array([packed.useful_tokens])).sum())
            adv = packed.per_slot(advantages[start * g:(start + len(recs)) * g].astype(np.float32))
            local = {k: getattr(packed, k) for k in PACKED_KEYS + ("response_mask",)}
            batch = {k: self.global_batch(v) for k, v in {**local, "advantages": adv}.items()}
            kwargs = {"micro_rows": self.micro_rows(), "temperature": r.temperature}
            with self.compiles.phase("logprobs"):
                if start > 0:
                    batch["old_logp"], entropy = self.steps.packed_logprobs(self.params, batch,
                                                                            with_entropy=log_entropy, **kwargs)
                    if log_entropy:
                        batch["entropy"] = entropy
                if reference is not None:
                    batch["ref_logp"], _ = self.steps.packed_logprobs(reference, batch, **kwargs)
            batches.append(batch)
        return batches

    def update(self, batches: list[dict]) -> list[dict]:
        metrics = []
        log_entropy = self.is_logged(self.step + 1)
        for batch in batches:
            entropy = batch.pop("entropy", None)
            own_entropy = log_entropy and "old_logp" not in batch
            with self.compiles.phase("update"):
                self.params, self.opt_state, m = self.steps.grpo_update_packed(
                    self.params, self.opt_state, batch, self.settings, log_entropy=own_entropy)
            mask = batch["response_mask"]
            if own_entropy:  # the update's forward is the sampling policy's
                m["entropy"] = m.pop("entropy_sum") / jnp.maximum(m["num_tokens"], 1.0)
            elif entropy is not None:
                m["entropy"] = jnp.sum(entropy * mask) / jnp.maximum(jnp.sum(mask), 1.0)
            metrics.append(m)
        return jax.device_get(metrics)

    def train_step(self) -> StepResult:
        g = self.cfg.rollout.num_generations
        global_records = next(self.loader)
        positions = self.local_positions(len(global_records))
        records = [global_records[i] for i in positions]
        start = time.perf_counter()
        with self.compiles.phase("rollout"):
            rollout = self.rollout(records, positions)
        rollout_seconds = time.perf_counter() - start
        replies, reply_ids = decode_replies(self.tokenizer, rollout, self.stop_ids)
        row_records = [records[i // g] for i in range(len(replies))]
        rewards, extra = self.reward_fn(row_records, replies, reply_ids)
        self.abandon_if_stopping()  # a signal during the rollout: nothing is updated yet
        start = time.perf_counter()
        generated = sampler.reply_ids(rollout, stop_ids=())  # with the stop token
        update_metrics = self.update(self.minibatches(records, generated, self.advantages(rewards)))
        update_seconds = time.perf_counter() - start
        self.step += 1
        metrics = self.step_metrics(rewards, extra, rollout, update_metrics, rollout_seconds, update_seconds)
        samples = [{"id": row_records[i]["id"], "reward": float(rewards[i]), "reply": replies[i]}
                   for i in range(0, min(len(replies), 2 * g), g)]
        return StepResult(metrics, samples)

    def step_metrics(self, rewards, extra, rollout, update_metrics, rollout_seconds, update_seconds) -> dict:
        g = self.cfg.rollout.num_generations
        lengths = self.all_rows(rollout.lengths)
        metrics = jax.device_get(grpo.group_reward_metrics(jnp.asarray(self.all_rows(rewards)), g))
        metrics = {k: float(v) for k, v in metrics.items()}
        for name, values in extra.items():
            metrics[f"reward/{name}"] = float(np.nanmean(self.all_rows(np.asarray(values, np.float32))))
        for key in update_metrics[0]:
            metrics[key] = float(np.mean([m[key] for m in update_metrics]))
        stopped = self.all_rows((rollout.finish_reason == "stop").astype(np.float32))
        generated = int(lengths.sum())
        metrics.update({"reply_len/mean": float(lengths.mean()), "reply_len/max": int(lengths.max()),
                        "finish/stop_frac": float(stopped.mean()),
                        "time/rollout_s": rollout_seconds, "time/update_s": update_seconds,
                        "tokens_per_s": generated / max(rollout_seconds + update_seconds, 1e-9),
                        "rollout_tokens_per_s": generated / max(rollout_seconds, 1e-9),
                        **packing.layout_metrics(self.layout_stats["computed"], self.layout_stats["useful"]),
                        "epoch": self.loader.epoch, "updates": len(update_metrics),
                        "sampler_compiles": sampler.programs_built(),
                        "rollout/slot_utilisation": rollout.stats.utilisation,
                        "rollout/decode_steps": rollout.stats.decode_steps})
        return metrics

    def close(self):
        super().close()
        if isinstance(self.reward_fn, Rewards):
            self.reward_fn.close()
