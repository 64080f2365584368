"""The GRPO trainer end to end: it learns, it resumes exactly after SIGKILL, it gives the same losses on 8
devices and on 2 processes as on one, and it refuses bad input before any long work."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

import padded_reference
from conftest import REPO
from train_helpers import comparable, tiny_config, trainer

HELPER = str(Path(__file__).resolve().parent / "train_helpers.py")


def _run_script(run_dir, *args, env=None, timeout=600):
    result = subprocess.run([sys.executable, HELPER, str(run_dir), *args], capture_output=True, text=True,
                            cwd=REPO, env={**os.environ, **(env or {})}, timeout=timeout)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout.split("HISTORY ", 1)[1])


def test_grpo_learns_a_dense_synthetic_reward(tmp_path):
    t = trainer(tiny_config("train.steps=16", "checkpoint.every=100"), tmp_path / "run")
    history = t.run(progress=False)
    t.close()
    rewards = np.array([m["reward/mean"] for m in history])
    # about 10/64 of uniformly sampled tokens are "digits" at the start; GRPO must push that up a lot
    assert rewards[0] < 0.3, rewards
    assert rewards[-4:].mean() > rewards[0] + 0.3, rewards
    assert all(np.isfinite(m["loss"]) for m in history)
    assert history[0]["updates"] == 2  # batch 8 / mini-batch 4
    assert history[-1]["sampler_compiles"] == history[0]["sampler_compiles"]  # one bucket: compiled once


def test_a_single_update_per_step_is_on_policy(tmp_path):
    """Old log-probs come from the same function, temperature and weights as the update's: ratio 1, no clipping."""
    t = trainer(tiny_config("train.steps=1", "train.batch_size=4", "checkpoint.every=100",
                            "rollout.temperature=0.7"), tmp_path / "run")
    (metrics,) = t.run(progress=False)
    t.close()
    assert metrics["updates"] == 1
    assert metrics["ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["approx_kl"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["clip_frac"] == 0.0
    assert metrics["kl"] == pytest.approx(0.0, abs=1e-6)  # the reference is the initial policy


@pytest.mark.slow
def test_memory_knobs_do_not_change_the_math(tmp_path):
    """Sampling in prompt chunks and log-prob/gradient passes of one packed row instead of four give the same run."""
    runs = {}
    for name, knobs in {"whole": ["train.micro_batch_rows=4"],
                        "chunked": ["rollout.prompts_per_call=3", "train.micro_batch_rows=1"]}.items():
        t = trainer(tiny_config("train.steps=2", "checkpoint.every=100", "train.pack_tokens=96", *knobs),
                    tmp_path / name)
        runs[name] = t.run(progress=False)
        t.close()
    for a, b in zip(runs["whole"], runs["chunked"]):
        assert a["reward/mean"] == b["reward/mean"]  # identical samples
        for key in ("loss", "kl", "grad_norm", "entropy", "clip_frac"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-7), key


def test_a_step_is_the_padded_reference_step(tmp_path):
    """A GRPO step of two mini-batches (several groups per packed row, a row a pass) gives the metrics of the same
    step written out in the padded layout (tests/padded_reference.py) from its rollout: old and reference
    log-probs of the sampling policy, one optimizer step per mini-batch."""
    t = trainer(tiny_config("train.steps=1", "checkpoint.every=100", "train.pack_tokens=96",
                            "grpo.loss_agg=token-mean"), tmp_path / "run")
    p0 = jax.tree.map(np.asarray, t.params)
    rollout, minibatches = {}, t.minibatches

    def keep_rollout(records, generated, advantages):
        rollout.update(records=records, generated=generated, advantages=advantages)
        return minibatches(records, generated, advantages)

    t.minibatches = keep_rollout
    (metrics,) = t.run(progress=False)
    t.close()
    assert metrics["updates"] == 2
    cfg, g, per = t.cfg, t.cfg.rollout.num_generations, t.cfg.train.mini_batch_size
    options = {"temperature": cfg.rollout.temperature}
    params, opt_state, expected = p0, t.optimizer.init(p0), []
    for start in range(0, len(rollout["records"]), per):
        prompts = [r["prompt_ids"] for r in rollout["records"][start:start + per]]
        batch = padded_reference.pad_groups(prompts, [rollout["generated"][(start + i) * g:(start + i + 1) * g]
                                                      for i in range(len(prompts))])
        sampling, entropy = padded_reference.response_logprobs(t.model_config, p0, batch, **options)
        (_, m), grads = jax.value_and_grad(padded_reference.grpo_loss, argnums=1, has_aux=True)(
            t.model_config, params, batch, rollout["advantages"][start * g:(start + per) * g], sampling, sampling,
            cfg.grpo, max_len=cfg.rollout.max_new_tokens, **options)
        updates, opt_state = t.optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        mask = batch.response_mask
        expected.append({**m, "grad_norm": optax.global_norm(grads),
                         "entropy": np.sum(entropy * mask) / np.sum(mask)})
    for key in ("loss", "pg_loss", "kl", "grad_norm", "entropy", "clip_frac"):
        assert metrics[key] == pytest.approx(np.mean([float(m[key]) for m in expected]), rel=1e-4, abs=1e-7), key


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """(history, run directory) of the 6-step script run the interrupted runs are compared with."""
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "full"
    return _run_script(run_dir, "--set=train.steps=6"), run_dir


@pytest.mark.slow
def test_resume_after_sigkill_matches_the_uninterrupted_run(tmp_path, uninterrupted):
    steps = 6
    full, full_dir = uninterrupted

    run_dir = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, HELPER, str(run_dir), f"--set=train.steps={steps}"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (run_dir / "checkpoints" / str(steps // 2)).is_dir():  # a finished checkpoint (no tmp suffix)
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert done[-1] < steps, "killed too late to test anything"

    resumed = _run_script(run_dir, "--resume", f"--set=train.steps={steps}")
    assert len(resumed) == steps - done[-1]
    assert comparable(resumed[-1]) == comparable(full[-1])

    from tooln1_jax import checkpoint

    _, a = checkpoint.load_model(full_dir)
    _, b = checkpoint.load_model(run_dir)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # the metrics file of the resumed run reads like the uninterrupted one's
    lines = lambda d: [comparable(json.loads(l)) for l in (d / "metrics.jsonl").read_text().splitlines()]  # noqa
    assert lines(run_dir) == lines(full_dir)


@pytest.mark.slow
def test_eight_devices_give_the_losses_of_one(tmp_path):
    overrides = ["--set=train.steps=3", "--set=checkpoint.every=100"]
    one = _run_script(tmp_path / "one", *overrides, env={"JAX_PLATFORMS": "cpu"})
    for mesh in (["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"], ["mesh.fsdp=8"]):
        eight = _run_script(tmp_path / ("eight" + "_".join(mesh)), *overrides, *[f"--set={m}" for m in mesh],
                            env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"})
        for a, b in zip(one, eight):
            assert a["reward/mean"] == b["reward/mean"], mesh  # same samples
            for key in ("loss", "pg_loss", "kl", "grad_norm", "clip_frac"):
                assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-6), (mesh, key)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_through_jax_distributed_give_the_loss_of_one(tmp_path):
    # FSDP over both processes, and prompts of 3..40 tokens, so the hosts' own batches fall in different length
    # buckets: they must still agree on every shape
    overrides = ["--set=train.steps=2", "--set=checkpoint.every=100", "--set=mesh.data=1", "--set=mesh.fsdp=-1",
                 "--prompt-len-max=40"]
    one = _run_script(tmp_path / "one", *overrides,
                      env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"})
    port = _free_port()
    procs = []
    for pid in range(2):
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "TOOLN1_COORDINATOR": f"localhost:{port}",
               "TOOLN1_NUM_PROCESSES": "2", "TOOLN1_PROCESS_ID": str(pid)}
        procs.append(subprocess.Popen([sys.executable, HELPER, str(tmp_path / "multi"), *overrides], cwd=REPO,
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, f"{out}\n{err}"
    multi = json.loads(outs[0][0].split("HISTORY ", 1)[1])
    for a, b in zip(one, multi):
        assert b["reward/mean"] == pytest.approx(a["reward/mean"], rel=1e-6)  # same samples (rows in another order)
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-7)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)


@pytest.mark.slow
def test_grpo_learns_when_to_stop(tmp_path):
    """The stop token is part of what is trained: rewarding short replies must teach the policy to end them."""
    stop = 7

    def short_is_good(records, replies, reply_ids):
        return np.array([1.0 - len(ids) / 12 for ids in reply_ids], np.float32), {}

    t = trainer(tiny_config("train.steps=12", "checkpoint.every=100", "optim.lr=0.02"), tmp_path / "run",
                reward_fn=short_is_good)
    t.stop_ids = (stop,)
    history = t.run(progress=False)
    t.close()
    lengths = np.array([m["reply_len/mean"] for m in history])
    assert lengths[0] > 6, lengths  # one stop id of 64: replies run long at first
    assert lengths[-3:].mean() < 0.5 * lengths[0], lengths
    for m in history:  # the loss covers every generated token, the stop token included
        assert m["finish/stop_frac"] > 0
        assert m["num_tokens"] * m["updates"] == pytest.approx(m["reply_len/mean"] * 8 * 4)


def test_bad_input_fails_before_long_work(tmp_path):
    from tooln1_jax import config as config_lib
    from tooln1_jax.config import ConfigError

    with pytest.raises(ConfigError, match="unknown key 'train.stepz'"):
        tiny_config("train.stepz=3")
    with pytest.raises(ConfigError, match="optim.lr must be float"):
        tiny_config("optim.lr=fast")
    with pytest.raises(ConfigError, match="not a multiple of train.mini_batch_size"):
        tiny_config("train.batch_size=6")
    with pytest.raises(ConfigError, match="train.micro_batch_size was removed: set train.micro_batch_rows"):
        tiny_config("train.micro_batch_size=8")
    (tmp_path / "old.yaml").write_text("train:\n  layout: padded\n")
    with pytest.raises(ConfigError, match=r"old.yaml: train.layout was removed: training always packs"):
        config_lib.load(tmp_path / "old.yaml")
    (tmp_path / "empty").mkdir()
    from tooln1_jax.data import prepared

    prepared.write_prepared([], tmp_path / "empty" / "train.parquet", "train")
    from tooln1_jax.train.trainer import GRPOTrainer

    with pytest.raises(ValueError, match=r"empty.*no records"):
        GRPOTrainer(tiny_config(f"data.train={tmp_path / 'empty'}"), run_dir=tmp_path / "r0")
    # a checkpoint of another model shape is refused when resuming
    t = trainer(tiny_config("train.steps=1"), tmp_path / "r1")
    t.run(progress=False)
    t.close()
    with pytest.raises(ValueError, match=r"another model shape \(hidden_size: checkpoint 32, config 48"):
        trainer(tiny_config("train.steps=2", "model.hidden_size=48"), tmp_path / "r1", resume=True)
    with pytest.raises(FileExistsError, match="--resume"):
        trainer(tiny_config("train.steps=2"), tmp_path / "r1")


def test_batch_that_does_not_divide_the_mesh_is_refused(tmp_path):
    result = subprocess.run(
        [sys.executable, HELPER, str(tmp_path / "r"), "--set=mesh.fsdp=8", "--set=train.micro_batch_rows=4",
         "--set=train.mini_batch_size=1", "--set=train.batch_size=2"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
        env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"})
    assert result.returncode != 0
    assert "train.micro_batch_rows = 4 does not divide over the 8 devices" in result.stderr


@pytest.mark.slow
def test_sigterm_saves_the_last_finished_step_and_resume_matches_the_uninterrupted_run(tmp_path, uninterrupted):
    """SIGTERM after step 2 of 6 (during step 3's rollout): step 3 is abandoned, a checkpoint of step 2 is written,
    the exit status is EXIT_INTERRUPTED; --resume finishes at step 6 with the uninterrupted run's parameters."""
    from tooln1_jax import checkpoint
    from tooln1_jax.train.preemption import EXIT_INTERRUPTED

    full, full_dir = uninterrupted  # checkpoints every step there: the same math
    steps = ["--set=train.steps=6", "--set=checkpoint.every=100"]  # no scheduled checkpoint before the last step
    run_dir = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, HELPER, str(run_dir), *steps, "--reward-seconds=1.5"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while '"step": 2' not in ((run_dir / "metrics.jsonl").read_text() if (run_dir / "metrics.jsonl").exists()
                              else ""):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert "SIGTERM" in err
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["2"]
    assert len(json.loads(out.split("HISTORY ", 1)[1])) == 2

    resumed = _run_script(run_dir, "--resume", *steps)
    assert len(resumed) == 4
    assert comparable(resumed[-1]) == comparable(full[-1])
    _, a = checkpoint.load_model(full_dir)
    _, b = checkpoint.load_model(run_dir)
    assert checkpoint.Checkpoints(run_dir, read_only=True).latest_step() == 6
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    lines = lambda d: [comparable(json.loads(l)) for l in (d / "metrics.jsonl").read_text().splitlines()]  # noqa
    assert lines(run_dir) == lines(full_dir)


def test_a_signal_between_steps_stops_after_saving_that_step(tmp_path):
    """In process: the signal handler only sets a flag; the loop saves the finished step and returns."""
    import os

    t = trainer(tiny_config("train.steps=4", "checkpoint.every=100"), tmp_path / "run")
    train_step = t.train_step

    def step_then_signal():
        result = train_step()
        if t.step == 1:
            os.kill(os.getpid(), signal.SIGINT)  # lands after the step's work, before the loop's check
        return result

    t.train_step = step_then_signal
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a pytest-xdist worker
    history = t.run(progress=False)
    t.close()
    assert t.interrupted == "SIGINT" and t.step == 1 and len(history) == 1
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["1"]
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


def test_metrics_without_a_checkpoint_are_refused_at_start_without_resume(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.4}\n')
    with pytest.raises(FileExistsError, match="metrics of an earlier run but no checkpoint"):
        trainer(tiny_config("train.steps=3"), run_dir)


def test_unfinished_orbax_saves_are_removed_at_start(tmp_path):
    from tooln1_jax import checkpoint

    stale = [tmp_path / "run" / "checkpoints" / name for name in ("3.orbax-checkpoint-tmp",
                                                                  "4.orbax-checkpoint-tmp-1712345678")]
    for path in stale:
        (path / "params").mkdir(parents=True)
        (path / "params" / "data").write_bytes(b"x" * 100)
    checkpoint.Checkpoints(tmp_path / "run").close()
    assert not any(path.exists() for path in stale)
    assert (tmp_path / "run" / "checkpoints").is_dir()
