"""grpo.reward plug-ins (`package.module:function`, TRL's signature): loading, weighting, the errors that name the
function and the record, reward workers, the config, and a GRPO run whose reward comes from a plug-in."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

from train_helpers import DIGITS, FakeTokenizer, digit_reward, synthetic_records, tiny_config, trainer
from tooln1_jax import assets
from tooln1_jax import config as config_lib
from tooln1_jax.rewards import plugins, toolcall
from tooln1_jax.train.trainer import Rewards

PLUGIN = textwrap.dedent('''
    def mentions_weather(prompts, completions, **columns):
        """1 when the prompt mentions the weather, None (does not apply) otherwise."""
        return [1.0 if "weather" in p else None for p in prompts]

    def reply_length(prompts, completions, answer, **columns):
        return [len(c) / 100 for c in completions]

    def digit_share(prompts, completions, **columns):
        """train_helpers.digit_reward, read off the reply text of FakeTokenizer."""
        shares = []
        for text in completions:
            ids = [int(t) for t in text.split()]
            shares.append(sum(10 <= t < 20 for t in ids) / len(ids) if ids else 0.0)
        return shares

    def too_few(prompts, completions, **columns):
        return [0.0] * (len(completions) - 1)

    def not_a_number(prompts, completions, **columns):
        return [0.5] * (len(completions) - 1) + ["high"]

    def crashes(prompts, completions, **columns):
        raise KeyError("score")

    NOT_CALLABLE = 3
''')

CALL = [{"name": "weather", "arguments": {"city": "Oslo"}}]


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    name = f"plug_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the reward workers import it too
    plugins.load.cache_clear()
    yield name
    plugins.load.cache_clear()


class TextTokenizer:
    """prompt_ids are indices into a list of prompt texts."""

    def __init__(self, texts):
        self.texts = texts

    def decode(self, ids, skip_special_tokens=False):
        return self.texts[ids[0]]


def batch():
    texts = ["what is the weather in Oslo?", "convert 5 km to miles"]
    records = [{"id": f"r{i}", "prompt_ids": [i], "answer": CALL, "tools": []} for i in range(2)]
    replies = ["<think>x</think><tool_call>" + json.dumps(CALL) + "</tool_call>", "<tool_call>[]</tool_call>"]
    rows = [records[0], records[0], records[1], records[1]]  # G = 2 replies per prompt
    return rows, [replies[0], replies[1], replies[0], replies[1]], TextTokenizer(texts)


@pytest.mark.parametrize("workers", [0, 2])
def test_weighted_sum_of_builtin_and_plugins(plugin_module, workers):
    rows, replies, tokenizer = batch()
    specs = ("binary", f"{plugin_module}:mentions_weather", f"{plugin_module}:reply_length")
    rewards_fn = Rewards(specs, (1.0, 0.5, -2.0), workers=workers, tokenizer=tokenizer)
    try:
        rewards, extra = rewards_fn(rows, replies, None)
    finally:
        rewards_fn.close()
    binary = [toolcall.score(r, CALL) for r in replies]
    weather = [1.0, 1.0, None, None]  # rows 2, 3 come from the prompt without "weather"
    expected = [b + (0.5 * w if w is not None else 0.0) - 2.0 * len(r) / 100
                for b, w, r in zip(binary, weather, replies)]
    np.testing.assert_allclose(rewards, expected, rtol=1e-6)
    assert binary == [1.0, 0.0, 1.0, 0.0]
    np.testing.assert_array_equal(extra[specs[1]], [1.0, 1.0, np.nan, np.nan])  # None stays "not applicable"
    np.testing.assert_array_equal(extra["exact_match"], [1, 0, 1, 0])


@pytest.mark.parametrize("function, message", [
    ("too_few", r"reward {m}:too_few: returned 3 values for 4 completions \(records r0 .. r1\)"),
    ("not_a_number", r"reward {m}:not_a_number: returned 'high' \(str\) for completion 3 \(record r1\)"),
    ("crashes", r"reward {m}:crashes raised KeyError: 'score' \(on records r0 .. r1\)"),
])
def test_a_bad_return_names_the_function_and_the_record(plugin_module, function, message):
    rows, replies, tokenizer = batch()
    rewards_fn = Rewards((f"{plugin_module}:{function}",), tokenizer=tokenizer)
    with pytest.raises(plugins.RewardError, match=message.format(m=plugin_module)):
        rewards_fn(rows, replies, None)


@pytest.mark.parametrize("spec, message", [
    ("no_such_module_xyz:fn", r"cannot import 'no_such_module_xyz' \(ModuleNotFoundError"),
    ("{m}:missing", r"{m} \(.*{m}.py\) has no 'missing'"),
    ("{m}:NOT_CALLABLE", "'NOT_CALLABLE' is a int, not a function"),
])
def test_a_plugin_that_does_not_load_is_named(plugin_module, spec, message):
    spec = spec.format(m=plugin_module)
    with pytest.raises(plugins.RewardError, match=f"grpo.reward '{spec}': " + message.format(m=plugin_module)):
        Rewards((spec,))


def test_config_reads_a_list_of_rewards_and_checks_them(tmp_path):
    assert config_lib.load(assets.DEMO_CONFIG).grpo.reward == ("binary",)
    assert config_lib.load(assets.DEMO_CONFIG, ["grpo.reward=name_partial"]).grpo.reward == ("name_partial",)  # one name
    cfg = config_lib.load(assets.DEMO_CONFIG, ["grpo.reward=[binary, my_pkg.rewards:length]", "grpo.reward_weights=[1, 0.1]"])
    assert cfg.grpo.reward == ("binary", "my_pkg.rewards:length") and cfg.grpo.reward_weights == (1.0, 0.1)
    config_lib.dump(cfg, tmp_path / "c.yaml")
    assert config_lib.load(tmp_path / "c.yaml") == cfg
    with pytest.raises(config_lib.ConfigError, match="grpo.reward 'binary_strict' is neither a built-in"):
        config_lib.load(assets.DEMO_CONFIG, ["grpo.reward=binary_strict"])
    with pytest.raises(config_lib.ConfigError, match=r"grpo.reward_weights has 1 values for 2 rewards"):
        config_lib.load(assets.DEMO_CONFIG, ["grpo.reward=[binary, a.b:c]", "grpo.reward_weights=[1]"])
    with pytest.raises(config_lib.ConfigError, match=r"grpo.reward\[1\] must be str, got 3"):
        config_lib.load(assets.DEMO_CONFIG, ["grpo.reward=[binary, 3]"])


@pytest.mark.slow
def test_a_grpo_run_on_a_plugin_reward_equals_the_same_reward_in_code(plugin_module, tmp_path):
    """The tiny GRPO run with `grpo.reward` naming a plug-in logs the rewards of the run given the same reward as
    a Python function (train_helpers.digit_reward); the plug-in sees the reply text only."""
    assert DIGITS == frozenset(range(10, 20))
    histories = []
    for name, kwargs in [("code", {"reward_fn": digit_reward}), ("plugin", {"reward_fn": None})]:
        cfg = tiny_config("train.steps=2", f"grpo.reward={plugin_module}:digit_share")
        t = trainer(cfg, tmp_path / name, records=synthetic_records(), **kwargs)
        assert isinstance(t.reward_fn, Rewards) == (name == "plugin")
        assert isinstance(t.tokenizer, FakeTokenizer)
        histories.append([m["reward/mean"] for m in t.run(progress=False)])
        t.close()
    assert histories[0] == pytest.approx(histories[1], abs=1e-6)
    assert 0 < histories[0][0] < 1
