"""Local-only: the real Qwen2.5-Coder-0.5B-Instruct GGUF against transformers loading the same file.

The file is not shipped (see README "Real weights"); set TOOLN1_GGUF or put it at the default path below.
"""

import os
from pathlib import Path

import numpy as np
import pytest

GGUF = Path(os.environ.get("TOOLN1_GGUF", Path.home() / ".cache/tooln1/qwen2.5-coder-0.5b-instruct.gguf"))
pytestmark = pytest.mark.skipif(not GGUF.exists(), reason=f"real GGUF weights not found at {GGUF} "
                                                          "(set TOOLN1_GGUF; see README 'Real weights')")


def _real_token_ids(n: int = 300) -> list[int]:
    from tooln1_jax import assets

    tok = assets.load_tokenizer()
    messages = [{"role": "system", "content": "You are a helpful assistant that writes Python."},
                {"role": "user", "content": "Write a function that parses an ISO date string, validates it, "
                                            "and returns the weekday name. Explain each step, then give tests."},
                {"role": "assistant", "content": "def weekday(s: str) -> str:\n    import datetime\n    d = "
                                                 "datetime.date.fromisoformat(s)\n    return d.strftime('%A')\n\n"
                                                 "This reads the string, builds a date, and formats the day. " * 6}]
    ids = tok.apply_chat_template(messages, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert len(ids) >= n
    return list(ids[:n])


def test_real_gguf_top1_agrees_with_transformers():
    import torch
    from transformers import AutoModelForCausalLM

    from tooln1_jax.models import qwen2, weights

    ids = np.array([_real_token_ids()])
    config, params = weights.load(GGUF, dtype="float32")
    assert (config.num_hidden_layers, config.hidden_size, config.num_key_value_heads) == (24, 896, 2)
    ours = np.asarray(qwen2.forward(config, params, ids))[0]
    del params

    reference = AutoModelForCausalLM.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name,
                                                     dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = reference(input_ids=torch.tensor(ids)).logits[0].float().numpy()
    agreement = float((ours.argmax(-1) == theirs.argmax(-1)).mean())
    print(f"top-1 agreement over {ids.shape[1]} positions: {agreement:.4f}; "
          f"max |dlogit| {np.abs(ours - theirs).max():.3g}")
    assert agreement >= 0.99


def test_real_gguf_greedy_rollouts_equal_transformers_generate():
    import torch
    from transformers import AutoModelForCausalLM

    from tooln1_jax import assets
    from tooln1_jax.models import weights
    from tooln1_jax.rollout import sampler

    tok = assets.load_tokenizer()
    chats = [[{"role": "user", "content": "Write a Python function that reverses a string."}],
             [{"role": "system", "content": "You are terse."},
              {"role": "user", "content": "List three prime numbers and explain why each is prime."}]]
    prompts = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in chats]
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    config, params = weights.load(GGUF, dtype="float32")
    ours = sampler.generate(config, params, ids, max_new_tokens=64, temperature=0.0, stop_ids=())
    del params

    reference = AutoModelForCausalLM.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name,
                                                     dtype=torch.float32).eval()
    for row, prompt in enumerate(ids):
        with torch.no_grad():
            out = reference.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                     do_sample=False, max_new_tokens=64, min_new_tokens=64, eos_token_id=None,
                                     pad_token_id=151643)
        theirs = out[0, len(prompt):].numpy()
        agree = int(np.cumprod(ours.tokens[row] == theirs).sum())
        print(f"row {row}: {agree}/64 tokens agree before the first difference")
        np.testing.assert_array_equal(ours.tokens[row], theirs)
