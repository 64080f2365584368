"""`tooln1 generate`: greedy replies equal transformers' greedy generation on the same weights and prompts; sampling
output shape and seeding; the prompts it builds with and without tools; input errors that name the file and line."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from conftest import STOP_IDS, hf_greedy, tiny_hf_model
from tooln1_jax import assets
from tooln1_jax.cli import main as cli_main
from tooln1_jax.data import prompts
from tooln1_jax import generate as generate_cli
from tooln1_jax.rollout import sampler

WEATHER = {"name": "get_weather", "description": "Current weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
TIME = {"name": "get_time", "description": "Local time in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
HELLO = [{"role": "user", "content": "Hello there"}]
BRIEF = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2? One word."}]
PARIS = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def tokenizer():
    return assets.load_tokenizer()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A 1-layer random Qwen2 (hidden 32) with the real vocabulary, peaked enough that greedy text varies."""
    model = tiny_hf_model(2, 1, True, vocab=151936, layers=1, head_dim=16, init_std=0.3)
    model.config.max_position_embeddings = 2048  # room for the Tool-N1 system prompt
    path = tmp_path_factory.mktemp("generate") / "hf"
    model.save_pretrained(path)
    return path, model


def write_jsonl(path, values) -> str:
    path.write_text("".join(json.dumps(v) + "\n" for v in values))
    return str(path)


def run_cli(capsys, argv) -> list[dict]:
    assert cli_main(["generate", *argv]) == 0, capsys.readouterr().err
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


# ---- end to end through the CLI -----------------------------------------------------------------------------------
def test_greedy_replies_equal_transformers_greedy(model_dir, tokenizer, tmp_path, capsys):
    path, model = model_dir
    lines = [HELLO, {"messages": BRIEF}, {"messages": PARIS, "tools": [WEATHER]}]
    rows = run_cli(capsys, ["--model", str(path), "--messages", write_jsonl(tmp_path / "m.jsonl", lines),
                            "--max-new-tokens", "10", "--batch-size", "2"])  # two batches: 2 + 1 prompts
    # the prompts, written out independently: the chat template as is, or the Tool-N1 system prompt
    expected_prompts = [
        tokenizer.apply_chat_template(HELLO, add_generation_prompt=True, tokenize=False),
        tokenizer.apply_chat_template(BRIEF, add_generation_prompt=True, tokenize=False),
        tokenizer.apply_chat_template([{"role": "system", "content": prompts.system_prompt([WEATHER])}, *PARIS],
                                      add_generation_prompt=True, tokenize=False)]
    assert [(r["index"], r["sample"]) for r in rows] == [(0, 0), (1, 0), (2, 0)]
    for row, prompt in zip(rows, expected_prompts):
        reply, num_tokens, finish = hf_greedy(model, tokenizer, prompt, 10)
        assert (row["reply"], row["num_tokens"], row["finish_reason"]) == (reply, num_tokens, finish)
    assert len({r["reply"] for r in rows}) == 3


def test_samples_come_in_groups_and_follow_the_seed(model_dir, tmp_path, capsys):
    messages = write_jsonl(tmp_path / "m.jsonl", [HELLO, HELLO])  # the same prompt in two batches
    argv = ["--model", str(model_dir[0]), "--messages", messages, "--max-new-tokens", "6", "--num-samples", "3",
            "--temperature", "1.0", "--batch-size", "1"]
    rows = run_cli(capsys, argv + ["--seed", "7"])
    assert [(r["index"], r["sample"]) for r in rows] == [(i, j) for i in range(2) for j in range(3)]
    for row in rows:
        assert set(row) == {"index", "sample", "reply", "finish_reason", "num_tokens"}
        assert isinstance(row["reply"], str) and 1 <= row["num_tokens"] <= 6
        assert row["finish_reason"] == "stop" or (row["finish_reason"] == "length" and row["num_tokens"] == 6)
    replies = [r["reply"] for r in rows]
    assert replies[:3] != replies[3:]  # each conversation draws from its own random stream
    assert [r["reply"] for r in run_cli(capsys, argv + ["--seed", "7"])] == replies
    assert [r["reply"] for r in run_cli(capsys, argv + ["--seed", "8"])] != replies
    # the samples of a conversation depend on its index, not on how the file is batched
    assert [r["reply"] for r in run_cli(capsys, argv[:-2] + ["--batch-size", "2", "--seed", "7"])] == replies


def test_bad_input_exits_2_with_the_file_and_line_before_loading_the_model(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(HELLO) + "\n" + '{"messages": [\n')
    no_model = str(tmp_path / "no-model")
    assert cli_main(["generate", "--model", no_model, "--messages", str(bad)]) == 2
    assert f"{bad}:2: not valid JSON" in capsys.readouterr().err
    assert cli_main(["generate", "--model", no_model, "--messages", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl not found" in capsys.readouterr().err


# ---- reading the messages file ------------------------------------------------------------------------------------
@pytest.mark.parametrize("line, message", [
    ("[{\"role\": \"user\", \"content\": \"hi\"", "not valid JSON"),
    ("42", "expected a non-empty list of chat messages"),
    ("[]", "expected a non-empty list of chat messages"),
    ('[{"role": "robot", "content": "hi"}]', "message 0 must be an object with role one of"),
    ('[{"role": "user", "content": 3}]', "message 0 (user) needs a string 'content'"),
    ('[{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]', "may only come first"),
    ('[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]', "ends with an assistant"),
    ('{"messages": [{"role": "user", "content": "a"}], "id": 1}', "unknown key 'id'"),
    ('{"messages": [{"role": "user", "content": "a"}], "tools": {"name": "x"}}', "tools must be a JSON list"),
    ('{"messages": [{"role": "user", "content": "a"}], "tools": [{"description": "x"}]}', "tool 0 must be"),
    ('[{"role": "user", "content": "a"}, {"role": "assistant", "content": null, "tool_calls": [{"name": "f"}]},'
     ' {"role": "tool", "content": "r"}]', "message 1: tool call 0 must be"),
])
def test_a_bad_line_is_an_error_naming_the_file_and_line(tmp_path, line, message):
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(HELLO) + "\n\n" + line + "\n")  # the bad conversation is on line 3
    with pytest.raises(ValueError) as error:
        generate_cli.read_conversations(path)
    assert str(error.value).startswith(f"{path}:3: ") and message in str(error.value)


def test_blank_lines_are_skipped_and_line_tools_override_the_file_tools(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [HELLO, {"messages": PARIS, "tools": [TIME]},
                                              {"messages": PARIS, "tools": []}, {"messages": PARIS}])
    (tmp_path / "m.jsonl").write_text("\n" + (tmp_path / "m.jsonl").read_text() + "\n  \n")
    conversations = generate_cli.read_conversations(path, [WEATHER])
    assert [c.tools for c in conversations] == [[WEATHER], [TIME], [], [WEATHER]]
    assert conversations[0].messages == HELLO


def test_the_tools_file(tmp_path):
    path = tmp_path / "tools.json"
    path.write_text(json.dumps([WEATHER, {"type": "function", "function": TIME}]))
    assert generate_cli.read_tools(path) == [WEATHER, TIME]  # OpenAI-style entries are unwrapped
    path.write_text("[{]")
    with pytest.raises(ValueError, match=f"{path}: not valid JSON"):
        generate_cli.read_tools(path)
    with pytest.raises(FileNotFoundError, match="--tools: .*nope.json not found"):
        generate_cli.read_tools(tmp_path / "nope.json")
    assert generate_cli.read_tools(None) is None


# ---- the prompts --------------------------------------------------------------------------------------------------
def conversation(messages, tools=None):
    return generate_cli.Conversation(generate_cli._check_messages(messages, "test"), tools)


def test_without_tools_the_prompt_is_the_plain_chat_template(tokenizer):
    for tools in (None, []):
        prompt = generate_cli.build_prompt(conversation(HELLO, tools), tokenizer)
        assert prompt == ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
                          "<|im_end|>\n<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n")


def test_tools_switch_to_the_tool_n1_system_prompt(tokenizer):
    prompt = generate_cli.build_prompt(conversation(PARIS, [WEATHER, TIME]), tokenizer)
    tool_block = "<tools>\n" + "\n".join(json.dumps({"type": "function", "function": t}) for t in (WEATHER, TIME))
    assert prompt.startswith("<|im_start|>system\n" + prompts.DEFAULT_PREAMBLE)
    assert tool_block + "\n</tools>" in prompt and "<think>" in prompt and "You are Qwen" not in prompt
    assert prompt.endswith("<|im_start|>user\nWhat is the weather in Paris?<|im_end|>\n<|im_start|>assistant\n")
    # a system message of the conversation replaces the Tool-N1 preamble; the tool block stays
    custom = generate_cli.build_prompt(conversation([{"role": "system", "content": "Be exact."}, *PARIS], [WEATHER]),
                                       tokenizer)
    assert custom.startswith("<|im_start|>system\nBe exact.") and prompts.DEFAULT_PREAMBLE not in custom
    assert json.dumps({"type": "function", "function": WEATHER}) in custom
    assert custom.count("<|im_start|>system") == 1


def test_earlier_calls_and_results_reach_the_prompt(tokenizer):
    calls = [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    history = [*PARIS, {"role": "assistant", "content": None, "tool_calls": calls},
               {"role": "tool", "content": "18 C, sunny"}, {"role": "user", "content": "And in Rome?"}]
    with_tools = generate_cli.build_prompt(conversation(history, [WEATHER]), tokenizer)
    assert json.dumps(json.dumps(calls)) in with_tools  # the reference writes an earlier call as a JSON string
    plain = generate_cli.build_prompt(conversation(history), tokenizer)
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in plain
    for prompt in (with_tools, plain):
        assert "<tool_response>\n18 C, sunny\n</tool_response>" in prompt
        assert prompt.endswith("And in Rome?<|im_end|>\n<|im_start|>assistant\n")


# ---- the output rows ----------------------------------------------------------------------------------------------
def test_reply_rows_drop_the_stop_token_but_count_it(tokenizer):
    hello, world = tokenizer.encode("Hello"), tokenizer.encode(" world<tool_call>")
    tokens = np.zeros((4, 8), np.int32)
    rows = [hello + [STOP_IDS[0]], hello + world, world + [STOP_IDS[1]], [STOP_IDS[0]]]
    for i, r in enumerate(rows):
        tokens[i, :len(r)] = r
    rollout = sampler.Rollout(tokens=tokens, lengths=np.array([len(r) for r in rows], np.int32),
                              logprobs=np.zeros((4, 8), np.float32), prompt_index=np.array([0, 0, 1, 1], np.int32),
                              finish_reason=np.array(["stop", "length", "stop", "stop"]))
    out = generate_cli.reply_rows(rollout, tokenizer, STOP_IDS, num_samples=2, first_index=10)
    assert out == [
        {"index": 10, "sample": 0, "reply": "Hello", "finish_reason": "stop", "num_tokens": len(hello) + 1},
        {"index": 10, "sample": 1, "reply": "Hello world<tool_call>", "finish_reason": "length",
         "num_tokens": len(hello + world)},
        {"index": 11, "sample": 0, "reply": " world<tool_call>", "finish_reason": "stop", "num_tokens": len(world) + 1},
        {"index": 11, "sample": 1, "reply": "", "finish_reason": "stop", "num_tokens": 1}]


@pytest.mark.parametrize("flag", ["batch_size", "num_samples", "max_new_tokens"])
def test_counts_must_be_positive(tmp_path, flag):
    args = argparse.Namespace(messages=write_jsonl(tmp_path / "m.jsonl", [HELLO]), tools=None, model="x",
                              batch_size=1, num_samples=1, max_new_tokens=1)
    setattr(args, flag, 0)
    with pytest.raises(ValueError, match=f"--{flag.replace('_', '-')} must be >= 1, got 0"):
        generate_cli.run(args)
