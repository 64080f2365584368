"""Prompt rendering: the exact text of docs/FORMATS.md and the prompt README, written out here by hand."""

import pytest

from tooln1_jax import assets
from tooln1_jax.data import prompts


@pytest.fixture(scope="module")
def tok():
    return assets.load_tokenizer()


WEATHER = {"name": "weather", "description": "Forecast.", "parameters": {"city": {"type": "str"}}}
CONVERT = {"name": "convert", "description": "Units: km → mi.",
           "parameters": {"value": {"type": "float"}, "unit": {"type": "str"}}}

# The reference preamble and tool block, typed out (trailing spaces spelled as " \n").
PREAMBLE = (
    "You are an expert in composing functions. You are given a question and a set of possible functions. \n"
    "Based on the question, you will need to make one or more function/tool calls to achieve the purpose. \n"
    "If none of the function can be used, point it out. If the given question lacks the parameters required by "
    "the function,\nalso point it out. You should only return the function call in tools call sections. "
    "Here is a list of functions in JSON format that you can invoke:\n")
BLOCK_HEAD = "# Tool\n\nHere is a list of functions in JSON format that you can invoke:\n\n<tools>\n"
BLOCK_TAIL = (
    "\n</tools>\n\n"
    "In each action step, you MUST: \n"
    "1. Think about the reasoning process in the mind and enclosed your reasoning within <think> </think> XML "
    "tags.\n"
    "2. Then, provide a json object with function names and arguments within <tool_call></tool_call> XML tags. "
    'i.e., <tool_call>[{"name": <function-name>, "arguments": <args-json-object>}, {"name": <function-name2>, '
    '"arguments": <args-json-object2>}, ...]</tool_call>\n'
    "3. Make sure both the reasoning and the tool call steps are included together in one single reply.\n"
    "A complete reply example is: <think>To address the query, I need to send the email to Bob and then buy the "
    'banana through walmart. </think> <tool_call> [{"name": "email", "arguments": {"receiver": "Bob", '
    '"content": "I will bug banana through walmart"}}, {"name": "walmart", "arguments": {"input": "banana"}}]'
    "</tool_call>. Please make sure the type of the arguments is correct. \n")
WEATHER_LINE = ('{"type": "function", "function": {"name": "weather", "description": "Forecast.", '
                '"parameters": {"city": {"type": "str"}}}}')
CONVERT_LINE = ('{"type": "function", "function": {"name": "convert", "description": "Units: km \\u2192 mi.", '
                '"parameters": {"value": {"type": "float"}, "unit": {"type": "str"}}}}')

SINGLE = {"id": "xlam-1", "source": "xlam", "system": None, "tools": [WEATHER],
          "messages": [{"role": "user", "content": "Weather in Oslo?"}],
          "answer": [{"name": "weather", "arguments": {"city": "Oslo"}}]}

MULTI = {"id": "toolace-3@5", "source": "toolace", "system": "Pre:\n", "tools": [WEATHER, CONVERT],
         "messages": [
             {"role": "user", "content": "Oslo and Bergen?"},
             {"role": "assistant", "content": "",
              "tool_calls": [{"name": "weather", "arguments": {"city": "Oslo"}},
                             {"name": "weather", "arguments": {"city": "Bergen"}}]},
             {"role": "tool", "content": '{"t": 3}'},
             {"role": "tool", "content": '{"t": 5}'},
             {"role": "assistant", "content": "3 and 5 degrees."},
             {"role": "user", "content": "5 km in miles?"}],
         "answer": [{"name": "convert", "arguments": {"value": 5.0, "unit": "mi"}}]}


def test_shipped_prompt_files_are_the_reference_text():
    assert prompts.DEFAULT_PREAMBLE == PREAMBLE
    assert prompts.TOOL_BLOCK == BLOCK_HEAD + "{tools}" + BLOCK_TAIL


def test_system_prompt():
    assert prompts.system_prompt([WEATHER]) == PREAMBLE + BLOCK_HEAD + WEATHER_LINE + BLOCK_TAIL
    assert (prompts.system_prompt([WEATHER, CONVERT], "Pre:\n")
            == "Pre:\n" + BLOCK_HEAD + WEATHER_LINE + "\n" + CONVERT_LINE + BLOCK_TAIL)


def test_render_single_turn(tok):
    expected = ("<|im_start|>system\n" + PREAMBLE + BLOCK_HEAD + WEATHER_LINE + BLOCK_TAIL + "<|im_end|>\n"
                "<|im_start|>user\nWeather in Oslo?<|im_end|>\n"
                "<|im_start|>assistant\n")
    assert prompts.render(SINGLE, tok) == expected
    assert prompts.render({**SINGLE, "system": ""}, tok) == expected  # empty system -> the default preamble


def test_render_multi_turn_with_earlier_calls_and_tool_results(tok):
    expected = (
        "<|im_start|>system\nPre:\n" + BLOCK_HEAD + WEATHER_LINE + "\n" + CONVERT_LINE + BLOCK_TAIL + "<|im_end|>\n"
        "<|im_start|>user\nOslo and Bergen?<|im_end|>\n"
        '<|im_start|>assistant\n"[{\\"name\\": \\"weather\\", \\"arguments\\": {\\"city\\": \\"Oslo\\"}}, '
        '{\\"name\\": \\"weather\\", \\"arguments\\": {\\"city\\": \\"Bergen\\"}}]"<|im_end|>\n'
        '<|im_start|>user\n<tool_response>\n{"t": 3}\n</tool_response>\n<tool_response>\n{"t": 5}\n'
        "</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n3 and 5 degrees.<|im_end|>\n"
        "<|im_start|>user\n5 km in miles?<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert prompts.render(MULTI, tok) == expected


def test_render_native_tools(tok):
    expected = (
        "<|im_start|>system\nPre:\n\n\n# Tools\n\nYou may call one or more functions to assist with the user query."
        "\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        + WEATHER_LINE + "\n"
        '{"type": "function", "function": {"name": "convert", "description": "Units: km → mi.", '
        '"parameters": {"value": {"type": "float"}, "unit": {"type": "str"}}}}'
        "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\nOslo and Bergen?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "weather", "arguments": {"city": "Bergen"}}\n</tool_call><|im_end|>\n'
        '<|im_start|>user\n<tool_response>\n{"t": 3}\n</tool_response>\n<tool_response>\n{"t": 5}\n'
        "</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n3 and 5 degrees.<|im_end|>\n"
        "<|im_start|>user\n5 km in miles?<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert prompts.render(MULTI, tok, native_tools=True) == expected
    assert prompts.chat_messages(MULTI, native_tools=True)[0] == {"role": "system", "content": "Pre:\n"}
    assert prompts.chat_messages(SINGLE, native_tools=True)[0] == {"role": "system", "content": PREAMBLE}


def test_chat_messages_shape():
    messages = prompts.chat_messages(MULTI)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "tool", "assistant", "user"]
    assert all(set(m) == {"role", "content"} for m in messages)


def test_unknown_role_is_an_error():
    with pytest.raises(ValueError, match="role must be user, assistant or tool, got 'system'"):
        prompts.chat_messages({**SINGLE, "messages": [{"role": "system", "content": "x"}]})


def test_encode_is_the_tokenized_render(tok):
    ids = prompts.encode(MULTI, tok)
    assert ids[:3] == [151644, 8948, 198]  # <|im_start|> system \n
    assert ids[-3:] == [151644, 77091, 198]  # <|im_start|> assistant \n
    assert tok.decode(ids) == prompts.render(MULTI, tok)
    assert ids.count(151645) == 6  # one <|im_end|> per rendered turn (two tool results share one)


def test_encode_records_drops_long_prompts_and_counts_them(tok):
    short, long = len(prompts.encode(SINGLE, tok)), len(prompts.encode(MULTI, tok))
    assert short < long
    recs = [SINGLE, MULTI, {**SINGLE, "id": "xlam-2"}]
    kept, dropped = prompts.encode_records(recs, tok, max_prompt_tokens=short)  # the limit itself is allowed
    assert [r["id"] for r in kept] == ["xlam-1", "xlam-2"]
    assert dropped == {"prompt_too_long": 1}
    assert kept[0]["prompt_ids"] == prompts.encode(SINGLE, tok)
    assert "prompt_ids" not in SINGLE  # inputs are not modified
    kept, dropped = prompts.encode_records(recs, tok, max_prompt_tokens=long, native_tools=True)
    assert len(kept) == 3 and not dropped
    assert kept[1]["prompt_ids"] == prompts.encode(MULTI, tok, native_tools=True)
