"""Converters (xLAM, ToolACE, ShareGPT, Tool-N1 parquet), file reading errors, and the prepared-parquet round trip.

Every expected record and drop count below is worked out by hand from the fixture rows and docs/FORMATS.md.
"""

import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tooln1_jax import assets
from tooln1_jax.data import converters, prepared, prompts, raw_files
from tooln1_jax.data.python_calls import parse_python_calls
from tooln1_jax.data.records import DataError

WEATHER_TOOL = {"name": "weather", "description": "Forecast.", "parameters": {"city": {"type": "str"}}}
CONVERT_TOOL = {"name": "convert", "description": "Units.",
                "parameters": {"value": {"type": "float"}, "unit": {"type": "str"}}}


def write_json(path, data):
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


# ---------------------------------------------------------------- xLAM


def xlam_row(i, query, tools, answers):
    return {"id": i, "query": query, "tools": json.dumps(tools), "answers": json.dumps(answers)}


def test_xlam_rows_good_and_malformed(tmp_path):
    rows = [
        xlam_row(1, "Weather in Oslo, and 5 km in miles?", [WEATHER_TOOL, CONVERT_TOOL],
                 [{"name": "weather", "arguments": {"city": "Oslo"}},
                  {"name": "convert", "arguments": {"value": 5, "unit": "mi"}}]),
        {"id": 2, "query": "q", "tools": "[{\"name\": \"weather\"", "answers": "[]"},  # tools not JSON
        {"id": 3, "query": "q", "tools": json.dumps([WEATHER_TOOL]), "answers": "[{\"name\": "},  # answers not JSON
        xlam_row(4, "q", [WEATHER_TOOL], [{"name": "stock_price", "arguments": {}}]),  # unknown tool
        {"id": 5, "tools": json.dumps([WEATHER_TOOL]), "answers": "[]"},  # no query
        xlam_row(6, "q", [], [{"name": "weather", "arguments": {"city": "Rome"}}]),  # no tools
        xlam_row(7, "q", [WEATHER_TOOL], [{"name": "weather"}]),  # call without arguments
        xlam_row(8, "Rain in Lima?", [WEATHER_TOOL], [{"name": "weather", "arguments": "{\"city\": \"Lima\"}"}]),
        ["not", "an", "object"],
        xlam_row(10, "Tell me a joke.", [WEATHER_TOOL], []),  # a no-call example is kept
        xlam_row(11, "q", [{"description": "nameless"}], []),  # tool without a name
    ]
    out = converters.convert("xlam", write_json(tmp_path / "xlam.json", rows))
    assert out.rows == 11
    assert out.dropped == Counter({"tools_not_json": 1, "answer_not_json": 1, "unknown_tool": 1,
                                   "missing_field:query": 1, "no_tools": 1, "bad_call": 1,
                                   "row_not_an_object": 1, "bad_tool_entry": 1})
    assert [r["id"] for r in out.records] == ["xlam-1", "xlam-8", "xlam-10"]
    first = out.records[0]
    assert first == {
        "id": "xlam-1", "source": "xlam", "system": None, "tools": [WEATHER_TOOL, CONVERT_TOOL],
        "messages": [{"role": "user", "content": "Weather in Oslo, and 5 km in miles?"}],
        "answer": [{"name": "weather", "arguments": {"city": "Oslo"}},
                   {"name": "convert", "arguments": {"value": 5, "unit": "mi"}}],
        "multi_turn": False}
    assert out.records[1]["answer"] == [{"name": "weather", "arguments": {"city": "Lima"}}]  # string arguments decoded
    assert out.records[2]["answer"] == []


def test_xlam_shipped_sample():
    out = converters.convert("xlam", str(assets.path("samples", "xlam_sample.json")))
    raw = json.loads(assets.path("samples", "xlam_sample.json").read_text())
    assert out.dropped == Counter() and len(out.records) == len(raw) == 6
    for row, record in zip(raw, out.records):
        assert record["id"] == f"xlam-{row['id']}"
        assert record["answer"] == json.loads(row["answers"])
        assert record["tools"] == json.loads(row["tools"])
        assert record["messages"] == [{"role": "user", "content": row["query"]}]


# ---------------------------------------------------------------- ToolACE


def toolace_system(tools_text):
    return ("You are a helpful assistant.\nHere is a list of functions in JSON format that you can invoke:\n"
            + tools_text + ".\nShould you decide to return the function call(s), use [func(param=value)].\n"
            "Nothing else.")


TOOLACE_SYSTEM = toolace_system(json.dumps([WEATHER_TOOL, CONVERT_TOOL]))
TOOLACE_PREAMBLE = "You are a helpful assistant.\nHere is a list of functions in JSON format that you can invoke:\n"


def test_toolace_tools_are_cut_out_of_the_system_text():
    assert converters.toolace_tools(TOOLACE_SYSTEM) == (TOOLACE_PREAMBLE, [WEATHER_TOOL, CONVERT_TOOL])
    assert converters.toolace_tools("no list here") is None


def test_toolace_dialogues_good_and_malformed(tmp_path):
    dialogues = [
        {"system": TOOLACE_SYSTEM, "conversations": [  # 0: two call turns, one unparsable, one text turn
            {"from": "user", "value": "Weather in Oslo?"},
            {"from": "assistant", "value": "[weather(city=Oslo)]"},  # bare name: not a literal -> unparsable
            {"from": "user", "value": "Please retry."},
            {"from": "assistant", "value": "[weather(city='Oslo')]"},
            {"from": "tool", "value": "{\"temp\": 3}"},
            {"from": "assistant", "value": "It is 3 degrees."},
            {"from": "user", "value": "And 5 km in miles, plus Bergen's weather?"},
            {"from": "assistant", "value": "[convert(value=5.0, unit=\"mi\"), weather(city=\"Bergen\")]"},
        ]},
        {"system": "No functions for you.", "conversations": [{"from": "user", "value": "hi"}]},  # 1
        {"system": toolace_system("[{\"name\": \"weather\""), "conversations": [{"from": "user", "value": "x"}]},  # 2
        {"system": TOOLACE_SYSTEM, "conversations": [  # 3: unknown tool
            {"from": "user", "value": "Stock price?"}, {"from": "assistant", "value": "[stock(symbol='X')]"}]},
        {"system": TOOLACE_SYSTEM, "conversations": [  # 4: no call at all
            {"from": "user", "value": "Hello"}, {"from": "assistant", "value": "[Hi there] How can I help?"}]},
        {"system": TOOLACE_SYSTEM},  # 5: no conversations
        {"system": TOOLACE_SYSTEM, "conversations": [{"from": "narrator", "value": "Once upon a time"}]},  # 6
        {"system": TOOLACE_SYSTEM, "conversations": [  # 7: ShareGPT-style role names
            {"from": "human", "value": "Weather in Rome?"}, {"from": "gpt", "value": "[weather(city='Rome')]"},
            {"from": "observation", "value": "{}"}]},
        {"system": TOOLACE_SYSTEM, "conversations": [  # 8: a call with nothing before it
            {"from": "assistant", "value": "[weather(city='Rome')]"}]},
        {"system": toolace_system("[]"), "conversations": [{"from": "user", "value": "x"}]},  # 9: empty tool list
    ]
    out = converters.convert("toolace", write_json(tmp_path / "toolace.json", dialogues))
    assert out.rows == 10
    assert out.dropped == Counter({"call_unparsable": 1, "tools_not_in_system": 1, "tools_not_json": 1,
                                   "unknown_tool": 1, "no_call_turn": 1, "missing_field:conversations": 1,
                                   "unknown_role": 1, "empty_context": 1, "no_tools": 1})
    assert [r["id"] for r in out.records] == ["toolace-0@3", "toolace-0@7", "toolace-7@1"]

    first, second, rome = out.records
    assert first["system"] == TOOLACE_PREAMBLE and first["tools"] == [WEATHER_TOOL, CONVERT_TOOL]
    assert first["messages"] == [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "[weather(city=Oslo)]"},  # kept as plain text
        {"role": "user", "content": "Please retry."}]
    assert first["answer"] == [{"name": "weather", "arguments": {"city": "Oslo"}}]
    assert first["multi_turn"] is True
    assert second["messages"][3:] == [
        {"role": "assistant", "content": "", "tool_calls": [{"name": "weather", "arguments": {"city": "Oslo"}}]},
        {"role": "tool", "content": "{\"temp\": 3}"},
        {"role": "assistant", "content": "It is 3 degrees."},
        {"role": "user", "content": "And 5 km in miles, plus Bergen's weather?"}]
    assert second["answer"] == [{"name": "convert", "arguments": {"value": 5.0, "unit": "mi"}},
                                {"name": "weather", "arguments": {"city": "Bergen"}}]
    assert rome["messages"] == [{"role": "user", "content": "Weather in Rome?"}] and rome["multi_turn"] is False


def test_toolace_shipped_sample():
    out = converters.convert("toolace", str(assets.path("samples", "toolace_sample.json")))
    # 4 dialogues; dialogue 1 has two call turns (message 3: flights + hotel, message 7: hotel again).
    assert out.dropped == Counter() and out.rows == 4
    assert [r["id"] for r in out.records] == ["toolace-0@1", "toolace-1@3", "toolace-1@7", "toolace-2@1",
                                              "toolace-3@1"]
    assert [r["multi_turn"] for r in out.records] == [False, True, True, False, False]
    assert out.records[1]["answer"] == [
        {"name": "search_flights",
         "arguments": {"origin": "OSL", "destination": "LIS", "date": "2024-06-03", "max_stops": 0}},
        {"name": "Hotel Search", "arguments": {"city": "Lisbon", "nights": 3, "amenities": ["pool", "wifi"]}}]
    assert out.records[3]["answer"] == [{"name": "Tide Times", "arguments": {"station": "Bergen", "days": 2}}]


@pytest.mark.parametrize("text, expected", [
    ('[get_price(symbol="AAPL", days=5), news(topic=\'tech\')]',
     [{"name": "get_price", "arguments": {"symbol": "AAPL", "days": 5}},
      {"name": "news", "arguments": {"topic": "tech"}}]),
    ("[Get Stock Price(symbol='A, B(c)', n=-1.5e3)]",
     [{"name": "Get Stock Price", "arguments": {"symbol": "A, B(c)", "n": -1500.0}}]),
    ('[a.b-c(x=[1, (2, 3)], y={"k": None, "t": True}, z="say \\"hi\\", ok")]',
     [{"name": "a.b-c", "arguments": {"x": [1, [2, 3]], "y": {"k": None, "t": True}, "z": 'say "hi", ok'}}]),
    ("  [f()]  ", [{"name": "f", "arguments": {}}]),
    ("[f(1)]", None),  # positional argument
    ("[f(a=b)]", None),  # a name, not a literal
    ("[f(a=__import__('os'))]", None),  # never evaluated
    ("[f(a={1, 2})]", None),  # a set is not JSON
    ("[f(a=1, a=2)]", None),  # repeated keyword
    ("[f(a=1)) ]", None),
    ("[f(**kw)]", None),
    ("[]", None),
    ("f(a=1)", None),
    ("[f(a=1), ]", None),
    ("[see (below)]", None),
])
def test_parse_python_calls(text, expected):
    assert parse_python_calls(text) == expected


# ---------------------------------------------------------------- ShareGPT (glaive)


def test_sharegpt_conversations_good_and_malformed(tmp_path):
    tools = json.dumps([WEATHER_TOOL, CONVERT_TOOL])
    rows = [
        {"tools": tools, "conversations": [  # 0: two call turns, the second a parallel list
            {"from": "human", "value": "Weather in Oslo?"},
            {"from": "function_call", "value": "{\"name\": \"weather\", \"arguments\": {\"city\": \"Oslo\"}}"},
            {"from": "observation", "value": "{\"temp\": 3}"},
            {"from": "gpt", "value": "3 degrees."},
            {"from": "human", "value": "Bergen and Rome?"},
            {"from": "function_call", "value": json.dumps([
                {"name": "weather", "arguments": "{\"city\": \"Bergen\"}"},
                {"name": "weather", "arguments": {"city": "Rome"}}])},
        ]},
        {"tools": tools, "conversations": [  # 1: undecodable call, then a call to an unknown tool
            {"from": "human", "value": "x"}, {"from": "function_call", "value": "{\"name\": \"weather\", "},
            {"from": "human", "value": "y"},
            {"from": "function_call", "value": "{\"name\": \"pay\", \"arguments\": {}}"},
        ]},
        {"tools": "[]", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
        {"tools": tools, "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
        {"conversations": [{"from": "human", "value": "hi"}]},  # no tools field
        {"tools": tools, "conversations": [  # 5: a call item without a name
            {"from": "human", "value": "x"}, {"from": "function_call", "value": "{\"arguments\": {}}"}]},
    ]
    out = converters.convert("sharegpt", write_json(tmp_path / "sharegpt.json", rows))
    assert out.dropped == Counter({"answer_not_json": 1, "unknown_tool": 1, "no_tools": 1, "no_call_turn": 1,
                                   "missing_field:tools": 1, "bad_call": 1})
    assert [r["id"] for r in out.records] == ["sharegpt-0@1", "sharegpt-0@5"]
    oslo, pair = out.records
    assert oslo["system"] is None and oslo["messages"] == [{"role": "user", "content": "Weather in Oslo?"}]
    assert oslo["answer"] == [{"name": "weather", "arguments": {"city": "Oslo"}}]
    assert pair["messages"][1:4] == [
        {"role": "assistant", "content": "", "tool_calls": [{"name": "weather", "arguments": {"city": "Oslo"}}]},
        {"role": "tool", "content": "{\"temp\": 3}"},
        {"role": "assistant", "content": "3 degrees."}]
    assert pair["answer"] == [{"name": "weather", "arguments": {"city": "Bergen"}},
                              {"name": "weather", "arguments": {"city": "Rome"}}]


def test_sharegpt_shipped_glaive_sample_counts():
    raw = json.loads(assets.path("samples", "glaive_toolcall_en_demo.json").read_text())
    # Independent count straight from the raw file.
    calls = sum(t["from"] == "function_call" for row in raw for t in row["conversations"])
    without_tools = sum(not json.loads(row["tools"]) for row in raw)
    tools_but_no_call = sum(bool(json.loads(row["tools"])) and
                            not any(t["from"] == "function_call" for t in row["conversations"]) for row in raw)
    assert (len(raw), calls) == (300, 211)  # as PROVENANCE.md describes the sample

    out = converters.convert("sharegpt", str(assets.path("samples", "glaive_toolcall_en_demo.json")))
    assert len(out.records) == calls
    assert out.dropped == Counter({"no_tools": without_tools, "no_call_turn": tools_but_no_call})
    assert len({r["id"] for r in out.records}) == calls
    single = sum(row["conversations"][1]["from"] == "function_call" for row in raw
                 if len(row["conversations"]) > 1)
    assert sum(not r["multi_turn"] for r in out.records) == single


# ---------------------------------------------------------------- Tool-N1 processed parquet

TOOLN1_SYSTEM = (
    "You are an expert in composing functions. You are given a question and a set of possible functions. \n"
    "Based on the question, you will need to make one or more function/tool calls to achieve the purpose. \n"
    "If none of the function can be used, point it out. If the given question lacks the parameters required by "
    "the function,\nalso point it out. You should only return the function call in tools call sections. "
    "Here is a list of functions in JSON format that you can invoke:\n"
    "# Tool\n\nHere is a list of functions in JSON format that you can invoke:\n\n<tools>\n"
    '{"type": "function", "function": {"name": "weather", "description": "Forecast.", '
    '"parameters": {"city": {"type": "str"}}}}\n'
    "</tools>\n\n"
    "In each action step, you MUST: \n"
    "1. Think about the reasoning process in the mind and enclosed your reasoning within <think> </think> XML "
    "tags.\n"
    "2. Then, provide a json object with function names and arguments within <tool_call></tool_call> XML tags. "
    'i.e., <tool_call>[{"name": <function-name>, "arguments": <args-json-object>}, {"name": <function-name2>, '
    '"arguments": <args-json-object2>}, ...]</tool_call>\n'
    "3. Make sure both the reasoning and the tool call steps are included together in one single reply.\n"
    "A complete reply example is: <think>To address the query, I need to send the email to Bob and then buy the "
    "banana through walmart. </think> <tool_call> [{\"name\": \"email\", \"arguments\": {\"receiver\": \"Bob\", "
    "\"content\": \"I will bug banana through walmart\"}}, {\"name\": \"walmart\", \"arguments\": {\"input\": "
    "\"banana\"}}]</tool_call>. Please make sure the type of the arguments is correct. \n")


def tooln1_row(prompt, truth, index):
    return {"data_source": "toolcall", "prompt": prompt, "ability": "toolcall",
            "reward_model": {"style": "rule", "ground_truth": truth},
            "extra_info": {"split": "train", "index": index, "prompt_type": "qwen"}}


def test_tooln1_parquet_rows(tmp_path):
    earlier_call = '"[{\\"name\\": \\"weather\\", \\"arguments\\": {\\"city\\": \\"Oslo\\"}}]"'
    legacy = TOOLN1_SYSTEM.replace("Here is a list of functions in JSON format that you can invoke:\n\n<tools>",
                                   "You are provided with function signatures within <tools></tools> XML tags:"
                                   "\n\n<tools>")
    compact = TOOLN1_SYSTEM.replace('{"type": "function", "function": {', '{"type":"function","function":{')
    rows = [
        tooln1_row([{"role": "system", "content": TOOLN1_SYSTEM}, {"role": "user", "content": "Oslo?"}],
                   '[{"name": "weather", "arguments": {"city": "Oslo"}}]', 0),
        tooln1_row([{"role": "system", "content": TOOLN1_SYSTEM}, {"role": "user", "content": "Oslo?"},
                    {"role": "assistant", "content": earlier_call}, {"role": "tool", "content": "{\"t\": 3}"},
                    {"role": "assistant", "content": "3 degrees."}, {"role": "user", "content": "Bergen?"}],
                   '[{"name": "weather", "arguments": {"city": "Bergen"}}]', 1),
        tooln1_row([{"role": "system", "content": legacy}, {"role": "user", "content": "Oslo?"}],
                   '[{"name": "weather", "arguments": {"city": "Oslo"}}]', 2),
        tooln1_row([{"role": "system", "content": TOOLN1_SYSTEM}, {"role": "user", "content": "Pay"}],
                   '[{"name": "pay", "arguments": {}}]', 3),
        tooln1_row([{"role": "system", "content": TOOLN1_SYSTEM}, {"role": "user", "content": "x"}], "[{", 4),
        tooln1_row([{"role": "system", "content": "Plain system text."}, {"role": "user", "content": "x"}],
                   "[]", 5),
        tooln1_row([{"role": "system", "content": compact}, {"role": "user", "content": "Oslo?"}],
                   '[{"name": "weather", "arguments": {"city": "Oslo"}}]', 6),
    ]
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    out = converters.convert("tooln1", str(tmp_path))  # a directory of parquet files
    assert out.dropped == Counter({"prompt_not_reproducible": 1, "unknown_tool": 1, "answer_not_json": 1,
                                   "tools_not_in_system": 1})
    first, second, older = out.records
    # the release's older tool-block wording is kept as the record's own: its prompt is the row's, byte for byte
    assert "tool_block" not in first and "You are provided with function signatures" in older["tool_block"]
    assert prompts.chat_messages(older) == rows[2]["prompt"]
    assert prompts.chat_messages(first) == rows[0]["prompt"]
    prepared.write_prepared(out.records, tmp_path / "prepared.parquet", "train")
    again = prepared.read_prepared(tmp_path / "prepared.parquet")
    assert again == out.records and prompts.chat_messages(again[2]) == rows[2]["prompt"]
    assert first["id"] == "tooln1-train-0" and first["source"] == "tooln1"
    assert first["system"] == TOOLN1_SYSTEM[:TOOLN1_SYSTEM.index("# Tool\n")]
    assert first["tools"] == [WEATHER_TOOL]
    assert first["messages"] == [{"role": "user", "content": "Oslo?"}] and not first["multi_turn"]
    assert second["messages"][1] == {"role": "assistant", "content": "",
                                     "tool_calls": [{"name": "weather", "arguments": {"city": "Oslo"}}]}
    assert second["answer"] == [{"name": "weather", "arguments": {"city": "Bergen"}}] and second["multi_turn"]


# ---------------------------------------------------------------- reading files: clear errors


def test_broken_json_names_file_and_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"query": "a"},\n  {"query": "b",,}\n]\n')
    with pytest.raises(DataError, match=r"broken\.json: line 3, column \d+: not valid JSON"):
        raw_files.read_rows(str(path))


def test_broken_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n{"a": 3\n')
    with pytest.raises(DataError, match=r"rows\.jsonl: line 4, column \d+: not valid JSON"):
        raw_files.read_rows(str(path))
    path.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert raw_files.read_rows(str(path)) == [{"a": 1}, {"a": 2}]


def test_json_lines_in_a_json_file_are_read(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text('{"a": 1}\n{"a": 2}\n')
    assert raw_files.read_rows(str(path)) == [{"a": 1}, {"a": 2}]


def test_unreadable_files_are_clear_errors(tmp_path):
    bad_parquet = tmp_path / "x.parquet"
    bad_parquet.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"x\.parquet: not a readable parquet file"):
        raw_files.read_rows(str(bad_parquet))
    not_a_list = tmp_path / "obj.json"
    not_a_list.write_text('{"rows": []}')
    with pytest.raises(DataError, match=r"obj\.json: expected a JSON list of rows, got a dict"):
        raw_files.read_rows(str(not_a_list))
    latin1 = tmp_path / "latin.json"
    latin1.write_bytes('["caf\xe9"]'.encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.json: byte 5: not UTF-8"):
        raw_files.read_rows(str(latin1))
    csv = tmp_path / "rows.csv"
    csv.write_text("a,b\n")
    with pytest.raises(DataError, match=r"rows\.csv: unsupported file type"):
        raw_files.read_rows(str(csv))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"empty: directory holds no \.json/\.jsonl/\.parquet files"):
        raw_files.read_rows(str(empty))


def test_missing_local_path_is_not_sent_to_the_hub(tmp_path):
    def hub(name, split):
        raise AssertionError("the hub must not be asked about a local path")

    for location in (str(tmp_path / "missing.json"), "./data/xlam", "data.jsonl"):
        with pytest.raises(DataError, match="no such file or directory"):
            raw_files.read_rows(location, hub_loader=hub)


def test_hub_ids_use_the_hub_loader_and_fail_clearly():
    seen = []

    def hub(name, split):
        seen.append((name, split))
        return [{"query": "q"}]

    assert raw_files.read_rows("Team-ACE/ToolACE", hub_loader=hub) == [{"query": "q"}]
    assert seen == [("Team-ACE/ToolACE", "train")]

    def offline(name, split):
        raise ConnectionError("hub unreachable")

    with pytest.raises(DataError, match=r"'Salesforce/xlam-function-calling-60k' is not a local file or directory, "
                                        r"and loading it from the hub failed \(ConnectionError: hub unreachable\)"):
        converters.convert("xlam", "Salesforce/xlam-function-calling-60k", hub_loader=offline)


def test_unknown_source_kind():
    with pytest.raises(DataError, match="unknown source kind 'glaive'"):
        converters.convert("glaive", "x.json")


# ---------------------------------------------------------------- prepared parquet round trip


def test_write_and_read_prepared_round_trip(tmp_path):
    recs = [
        {"id": "toolace-0@3", "source": "toolace", "system": "Pre:\n", "tools": [WEATHER_TOOL, CONVERT_TOOL],
         "messages": [{"role": "user", "content": "Tromsø?"},
                      {"role": "assistant", "content": "", "tool_calls": [{"name": "weather",
                                                                          "arguments": {"city": "Tromsø"}}]},
                      {"role": "tool", "content": "{}"}, {"role": "user", "content": "And 5 km?"}],
         "answer": [{"name": "convert", "arguments": {"value": 5.0, "unit": "mi"}}], "multi_turn": True,
         "prompt_ids": [1, 2, 3]},
        {"id": "xlam-1", "source": "xlam", "system": None, "tools": [WEATHER_TOOL],
         "messages": [{"role": "user", "content": "Oslo?"}], "answer": [], "multi_turn": False,
         "prompt_ids": [4, 5]},
    ]
    path = tmp_path / "train.parquet"
    prepared.write_prepared(recs, path, "train")
    assert prepared.read_prepared(path) == recs

    table = pq.read_table(path).to_pylist()
    assert table[1]["data_source"] == "toolcall" and table[1]["ability"] == "toolcall"
    assert table[0]["reward_model"] == {"style": "rule",
                                        "ground_truth": '[{"name": "convert", "arguments": {"value": 5.0, '
                                                        '"unit": "mi"}}]'}
    assert table[1]["extra_info"] == {"split": "train", "index": 1, "prompt_type": "qwen"}
    assert table[0]["prompt"][2] == {"role": "assistant",
                                     "content": '"[{\\"name\\": \\"weather\\", \\"arguments\\": '
                                                '{\\"city\\": \\"Troms\\\\u00f8\\"}}]"'}

    # The verl columns make a prepared file a valid Tool-N1 source that converts back to the same records.
    back = converters.convert("tooln1", str(path))
    assert back.dropped == Counter()
    assert [r["messages"] for r in back.records] == [r["messages"] for r in recs]
    assert [r["answer"] for r in back.records] == [r["answer"] for r in recs]


def test_read_prepared_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        prepared.read_prepared(tmp_path / "missing.parquet")
    path = tmp_path / "other.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": "a"}]), path)
    with pytest.raises(DataError, match=r"other\.parquet: row 0: missing column\(s\)"):
        prepared.read_prepared(path)
