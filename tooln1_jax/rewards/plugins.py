"""The reward functions `grpo.reward` names: the built-in Tool-N1 variants, or plug-ins `package.module:function`.

A plug-in has the signature of TRL's reward functions::

    def my_reward(prompts: list[str], completions: list[str], **columns) -> list[float | None]

`prompts` are the prompt texts (chat template applied), `completions` the decoded replies, and `columns` the
records' fields, one list each: `answer`, `tools`, `messages`, `system`, `id`, `source`, `multi_turn`. A value of
None means "does not apply to this reply"; several rewards are summed with `grpo.reward_weights`, a None counting
as 0 (TRL's nansum). Accept `**kwargs`: columns may be added. No jax import: this runs in the reward workers.
"""

from __future__ import annotations

import functools
import importlib
import math
import numbers
import re
from collections.abc import Callable, Sequence

from tooln1_jax.rewards import toolcall

BUILTINS = toolcall.VARIANTS
_PLUGIN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class RewardError(ValueError):
    """A reward function that cannot be loaded, or that returned something other than one number-or-None per reply."""


def is_builtin(spec: str) -> bool:
    return spec in BUILTINS


def is_plugin_spec(spec: str) -> bool:
    return bool(_PLUGIN.match(spec))


def builtin_reward(prompts, completions, *, answer, variant: str, **columns) -> list[float]:
    """The Tool-N1 rule-based reward `variant` of each completion against its record's answer."""
    return [toolcall.score(reply, calls, variant) for reply, calls in zip(completions, answer)]


@functools.cache
def load(spec: str) -> Callable:
    """The function a `grpo.reward` entry names (imported once per process)."""
    if is_builtin(spec):
        return functools.partial(builtin_reward, variant=spec)
    if not is_plugin_spec(spec):
        raise RewardError(f"grpo.reward {spec!r}: neither a built-in ({', '.join(BUILTINS)}) nor "
                          "'package.module:function'")
    module_name, _, name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise RewardError(f"grpo.reward {spec!r}: cannot import {module_name!r} ({type(e).__name__}: {e}); is it "
                          "installed, or its folder on PYTHONPATH?") from e
    fn = getattr(module, name, None)
    if fn is None:
        raise RewardError(f"grpo.reward {spec!r}: {module_name} ({getattr(module, '__file__', '?')}) has no {name!r}")
    if not callable(fn):
        raise RewardError(f"grpo.reward {spec!r}: {name!r} is a {type(fn).__name__}, not a function")
    return fn


def _checked(values, spec: str, ids: Sequence[str]) -> list[float | None]:
    if isinstance(values, str | bytes | dict) or not hasattr(values, "__len__"):
        raise RewardError(f"reward {spec}: returned a {type(values).__name__}; expected a list of float | None, "
                          f"one per completion")
    if len(values) != len(ids):
        raise RewardError(f"reward {spec}: returned {len(values)} values for {len(ids)} completions (records "
                          f"{ids[0]} .. {ids[-1]})")
    out = []
    for i, (value, record_id) in enumerate(zip(values, ids)):
        if value is None:
            out.append(None)
        elif isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
            out.append(float(value))
        else:
            raise RewardError(f"reward {spec}: returned {value!r} ({type(value).__name__}) for completion {i} "
                              f"(record {record_id}); expected a finite number or None")
    return out


def score(specs: Sequence[str], weights: Sequence[float], prompts: Sequence[str], completions: Sequence[str],
          columns: dict[str, list]) -> tuple[list[float], dict[str, list[float | None]]]:
    """(weighted sum per completion, each function's values) of the rewards `specs` on a batch of completions."""
    ids = columns.get("id") or [f"#{i}" for i in range(len(completions))]
    per_function = {}
    for spec in specs:
        fn = load(spec)
        try:
            values = fn(list(prompts), list(completions), **columns)
        except RewardError:
            raise
        except Exception as e:
            raise RewardError(f"reward {spec} raised {type(e).__name__}: {e} (on records {ids[0]} .. {ids[-1]})") from e
        per_function[spec] = _checked(values, spec, ids)
    total = [sum(w * v for w, v in zip(weights, row) if v is not None)
             for row in zip(*per_function.values())]
    return total, per_function


def score_chunk(specs, weights, prompts, completions, columns) -> tuple[list, dict, list[bool], list[bool]]:
    """`score` plus the exact-match and format flags of each completion (the run's diagnostics); the unit of work
    of a reward worker."""
    total, per_function = score(specs, weights, prompts, completions, columns)
    details = [toolcall.score_details(reply, answer)[1:] for reply, answer in zip(completions, columns["answer"])]
    exact, formatted = (list(x) for x in zip(*details)) if details else ([], [])
    return total, per_function, exact, formatted
