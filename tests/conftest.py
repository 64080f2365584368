"""Shared test helpers: tiny random transformers Qwen2 models, and running code on 8 fake CPU devices."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

# libtpu (the dev extra, for TPU topologies and compiles) takes a lock file per machine; pytest-xdist workers and
# the tests' subprocesses each load it
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
# the suite, its subprocesses and both xdist workers stay off the persistent compilation cache (~/.cache); the
# cache's own test turns it on for its subprocesses
os.environ.setdefault("JAX_ENABLE_COMPILATION_CACHE", "false")

REPO = Path(__file__).resolve().parent.parent
# (query heads, kv heads, tied head): 1, 2 and 7 query heads per KV head
TINY_SHAPES = [(4, 4, True), (4, 2, False), (7, 1, False)]


def tiny_hf_model(heads: int = 4, kv_heads: int = 2, tied: bool = False, *, vocab: int = 320, layers: int = 2,
                  head_dim: int = 16, seed: int = 0, rope_theta: float = 10000.0, init_std: float | None = None):
    """A randomly initialised transformers Qwen2ForCausalLM (float32, eval mode) with non-trivial biases/norms."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=vocab, hidden_size=heads * head_dim, intermediate_size=3 * heads * head_dim,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         tie_word_embeddings=tied, rope_theta=rope_theta, max_position_embeddings=512)
    model = Qwen2ForCausalLM(config).eval()
    if init_std is not None:
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, init_std)
    with torch.no_grad():  # HF initialises biases to 0 and norms to 1; perturb them so the test sees them
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.normal_(0.0 if name.endswith("bias") else 1.0, 0.3)
    return model


def hf_logits(model, tokens, attention_mask=None, positions=None) -> np.ndarray:
    import torch

    kwargs = {"input_ids": torch.tensor(np.asarray(tokens))}
    if attention_mask is not None:
        kwargs["attention_mask"] = torch.tensor(np.asarray(attention_mask))
    if positions is not None:
        kwargs["position_ids"] = torch.tensor(np.asarray(positions))
    with torch.no_grad():
        return model(**kwargs).logits.float().numpy()


STOP_IDS = (151645, 151643)  # <|im_end|>, <|endoftext|>


def hf_greedy(model, tokenizer, prompt: str, max_new_tokens: int) -> tuple[str, int, str]:
    """(reply without the stop token, tokens generated including it, finish reason) from transformers."""
    import torch

    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=list(STOP_IDS),
                             pad_token_id=STOP_IDS[1])
    new = out[0, len(ids):].tolist()
    stop = next((k for k, t in enumerate(new) if t in STOP_IDS), None)
    if stop is None:
        return tokenizer.decode(new), len(new), "length"
    return tokenizer.decode(new[:stop]), stop + 1, "stop"


def assert_logits_close(ours, ref):
    """The foundation issue's tolerance: max |d| <= 1e-4 * max|logit| or 2e-4 absolute, at every position."""
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape
    tol = max(1e-4 * float(np.abs(ref).max()), 2e-4)
    err = np.abs(ours - ref).max(axis=-1)
    assert float(err.max()) <= tol, f"max |dlogit| {err.max():.3g} > {tol:.3g}; per position:\n{err}"


@pytest.fixture
def tiny_model_dir(tmp_path):
    model = tiny_hf_model()
    path = tmp_path / "hf"
    model.save_pretrained(path)
    return path, model


def run_on_fake_devices(code: str, n: int = 8, timeout: int = 600) -> str:
    """Run `code` in a fresh interpreter that sees `n` CPU devices; returns stdout, fails the test on error."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n} " + env.get("XLA_FLAGS", "")
    env["JAX_PLATFORMS"] = "cpu"
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            env=env, cwd=REPO, timeout=timeout)
    assert result.returncode == 0, f"subprocess failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout
