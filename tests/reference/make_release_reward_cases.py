"""The replies of `release_reward_table.jsonl` (RELEASE_REWARD_TABLE.md says how the table was made from them).

Ground-truth calls are drawn with a fixed seed from the records shipped in tooln1_jax/assets (the demo set and the
converted samples; a multi-call answer is, when the draw asks for one, the calls of two or three records joined).
Each case kind below writes one way a reply can be right or wrong; every kind is drawn `PER_KIND` times, then
`RANDOM_MIXES` replies combine a random think style, call edit, JSON style, block layout and outside text. The answer
is stored as the release stores it (a JSON string). Nothing here knows either reward implementation.

    python tests/reference/make_release_reward_cases.py --out /tmp/release_reward_cases.jsonl
"""

from __future__ import annotations

import argparse
import copy
import json
import random

from tooln1_jax import assets
from tooln1_jax.data import converters, prepare

SEED = 20240524
PER_KIND = 14
RANDOM_MIXES = 240
THOUGHTS = ("The user wants this; I call the tool with the values given.",
            "Ich prüfe die Anfrage — 東京 → 大阪, then call the function.", "", "\n  step 1: read\n  step 2: call\n")
PROMPT_PREFIX = ("<|im_start|>system\nYou may call functions. Reason inside <think> </think>, then answer with "
                 "<tool_call>[{\"name\": \"f\", \"arguments\": {}}]</tool_call>.<|im_end|>\n"
                 "<|im_start|>user\nPlease help.<|im_end|>\n<|im_start|>assistant\n")


def shipped_answers() -> list[tuple[str, list]]:
    """(record id, answer calls) of every shipped record, in a fixed order."""
    out = []
    for split in ("train", "test"):
        for line in assets.path("demo", f"{split}.jsonl").read_text().splitlines():
            record = json.loads(line)
            out.append((record["id"], record["answer"]))
    for kind, location in sorted(prepare.shipped_samples().items()):
        out.extend((r["id"], r["answer"]) for r in converters.convert(kind, location).records)
    return sorted(out, key=lambda pair: pair[0])


# ---- pieces of a reply ----

def shuffled_keys(value, rng: random.Random):
    """The same JSON value with every object's keys in a random order."""
    if isinstance(value, dict):
        keys = list(value)
        rng.shuffle(keys)
        return {k: shuffled_keys(value[k], rng) for k in keys}
    if isinstance(value, list):
        return [shuffled_keys(v, rng) for v in value]
    return value


def dump(calls, rng: random.Random, style: str = "plain") -> str:
    if style == "plain":
        return json.dumps(calls)
    if style == "compact":
        return json.dumps(calls, separators=(",", ":"))
    if style == "indented":
        return json.dumps(calls, indent=2)
    if style == "raw_unicode":
        return json.dumps(calls, ensure_ascii=False)
    if style == "shuffled_keys":
        return json.dumps(shuffled_keys(calls, rng))
    if style == "single_object":  # one call written as an object, not a list
        return json.dumps(calls[0]) if len(calls) == 1 else json.dumps(calls)
    if style == "string_encoded":  # the list JSON-encoded once more
        return json.dumps(json.dumps(calls))
    raise ValueError(style)


JSON_STYLES = ("plain", "compact", "indented", "raw_unicode", "shuffled_keys", "single_object", "string_encoded")


def reply(body: str, *, think: str | None = "", pre: str = "", mid: str = "\n", post: str = "") -> str:
    """`pre <think>think</think> mid <tool_call>body</tool_call> post` (no think block when think is None)."""
    head = "" if think is None else f"<think>{think}</think>"
    return f"{pre}{head}{mid}<tool_call>{body}</tool_call>{post}"


def changed_value(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "s" if value else "x"
    if isinstance(value, list):
        return value[:-1] if value else [1]
    if isinstance(value, dict):
        return {**value, "extra": 1}
    return "none"


def retyped_value(value):
    """The value in another JSON type that prints alike (5 -> "5", 5 -> 5.0, True -> "true", "7" -> 7)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return float(value)
    if isinstance(value, float):
        return str(value)
    if isinstance(value, str):
        return int(value) if value.isdigit() else [value]
    return json.dumps(value)


def first_with_arguments(calls: list) -> dict | None:
    return next((c for c in calls if isinstance(c.get("arguments"), dict) and c["arguments"]), None)


def edit_one_argument(calls: list, rng: random.Random, edit) -> list:
    calls = copy.deepcopy(calls)
    call = first_with_arguments(calls)
    if call is None:  # nothing to edit: add an argument instead
        calls[0]["arguments"] = {"unexpected": 1}
        return calls
    key = rng.choice(sorted(call["arguments"]))
    edit(call["arguments"], key)
    return calls


# ---- call edits: the calls a reply carries instead of the answer ----

def _set(fn):
    return lambda args, key: args.__setitem__(key, fn(args[key]))


CALL_EDITS = {
    "exact": lambda calls, rng: copy.deepcopy(calls),
    "reordered_calls": lambda calls, rng: list(reversed(calls)) if len(calls) > 1 else calls,
    "wrong_name": lambda calls, rng: [dict(c, name=c["name"] + "_v2") if i == 0 else c for i, c in enumerate(calls)],
    "name_case": lambda calls, rng: [dict(c, name=c["name"].upper()) if i == 0 else c for i, c in enumerate(calls)],
    "wrong_value": lambda calls, rng: edit_one_argument(calls, rng, _set(changed_value)),
    "retyped_value": lambda calls, rng: edit_one_argument(calls, rng, _set(retyped_value)),
    "missing_argument": lambda calls, rng: edit_one_argument(calls, rng, lambda args, key: args.pop(key)),
    "extra_argument": lambda calls, rng: [dict(c, arguments={**c["arguments"], "verbose": True}) if i == 0 else c
                                          for i, c in enumerate(calls)],
    "empty_arguments": lambda calls, rng: [dict(c, arguments={}) for c in calls],
    "arguments_as_string": lambda calls, rng: [dict(c, arguments=json.dumps(c["arguments"])) for c in calls],
    "arguments_renamed_parameters": lambda calls, rng: [{"name": c["name"], "parameters": c["arguments"]}
                                                        for c in calls],
    "name_missing": lambda calls, rng: [{"arguments": c["arguments"]} for c in calls],
    "duplicated_call": lambda calls, rng: calls + [calls[0]],
    "dropped_call": lambda calls, rng: calls[:-1],
    "extra_call": lambda calls, rng: calls + [{"name": "get_time", "arguments": {"zone": "UTC"}}],
    "names_only_right": lambda calls, rng: [dict(c, arguments={"q": "?"}) for c in calls],
    "swapped_arguments": lambda calls, rng: ([dict(calls[0], arguments=calls[1]["arguments"]),
                                              dict(calls[1], arguments=calls[0]["arguments"])] + calls[2:]
                                             if len(calls) > 1 else calls),
    "no_calls": lambda calls, rng: [],
}


# ---- case kinds: (rng, calls) -> reply, or (reply, answer json) when the answer itself is the point ----

def _exact(rng, calls, style="plain"):
    return dump(calls, rng, style)


CASES = {
    # right replies, written in every way the JSON allows
    **{f"correct_{s}": (lambda s: lambda rng, calls: reply(_exact(rng, calls, s), think=rng.choice(THOUGHTS)))(s)
       for s in JSON_STYLES},
    "correct_reordered_calls": lambda rng, calls: reply(dump(CALL_EDITS["reordered_calls"](calls, rng), rng),
                                                        think="order free"),
    "correct_after_prompt": lambda rng, calls: PROMPT_PREFIX + reply(dump(calls, rng), think="ok"),
    # think tags
    "no_think": lambda rng, calls: reply(dump(calls, rng), think=None),
    "no_think_after_prompt_with_tags": lambda rng, calls: PROMPT_PREFIX + reply(dump(calls, rng), think=None),
    "prompt_tags_no_marker": lambda rng, calls: PROMPT_PREFIX.replace("<|im_start|>assistant", "")
                                                + reply(dump(calls, rng), think=None),
    "only_open_think": lambda rng, calls: "<think>I reason here.\n" + reply(dump(calls, rng), think=None),
    "only_close_think": lambda rng, calls: "I reason here.</think>\n" + reply(dump(calls, rng), think=None),
    "reversed_think": lambda rng, calls: "</think>reason<think>\n" + reply(dump(calls, rng), think=None),
    "think_after_call": lambda rng, calls: reply(dump(calls, rng), think=None, post="\n<think>done</think>"),
    "think_uppercase": lambda rng, calls: "<THINK>why</THINK>" + reply(dump(calls, rng), think=None),
    "think_spaced_tag": lambda rng, calls: "<think >why</think >" + reply(dump(calls, rng), think=None),
    "think_inside_block": lambda rng, calls: f"<tool_call><think>x</think>{dump(calls, rng)}</tool_call>",
    "empty_think": lambda rng, calls: reply(dump(calls, rng), think=""),
    "nested_think": lambda rng, calls: reply(dump(calls, rng), think="a <think> b </think> c"),
    # the block
    "no_block": lambda rng, calls: f"<think>ok</think>\n{dump(calls, rng)}",
    "unclosed_block": lambda rng, calls: f"<think>ok</think>\n<tool_call>{dump(calls, rng)}",
    "only_closing_tag": lambda rng, calls: f"<think>ok</think>\n{dump(calls, rng)}</tool_call>",
    "empty_block": lambda rng, calls: reply("", think="ok"),
    "whitespace_block": lambda rng, calls: reply(" \n\t ", think="ok"),
    "uppercase_block": lambda rng, calls: f"<think>ok</think><TOOL_CALL>{dump(calls, rng)}</TOOL_CALL>",
    "tools_tag": lambda rng, calls: f"<think>ok</think><tools>{dump(calls, rng)}</tools>",
    "code_fence_in_block": lambda rng, calls: reply(f"```json\n{dump(calls, rng)}\n```", think="ok"),
    "one_block_per_call": lambda rng, calls: "<think>ok</think>\n" + "\n".join(
        f"<tool_call>{json.dumps(c)}</tool_call>" for c in calls),
    "last_block_right": lambda rng, calls: reply(dump([{"name": "draft", "arguments": {}}], rng), think="ok")
                                           + reply(dump(calls, rng), think=None),
    "first_block_right": lambda rng, calls: reply(dump(calls, rng), think="ok")
                                            + reply(dump([{"name": "draft", "arguments": {}}], rng), think=None),
    "last_block_broken": lambda rng, calls: reply(dump(calls, rng), think="ok") + "<tool_call>[{</tool_call>",
    "nested_open_tag": lambda rng, calls: f"<think>ok</think><tool_call><tool_call>{dump(calls, rng)}</tool_call>",
    "block_in_think": lambda rng, calls: f"<think>plan: <tool_call>{dump(calls, rng)}</tool_call></think>",
    # broken JSON
    "truncated_json": lambda rng, calls: reply(dump(calls, rng)[:-1], think="ok"),
    "trailing_comma": lambda rng, calls: reply(dump(calls, rng)[:-1] + ",]", think="ok"),
    "python_repr": lambda rng, calls: reply(repr(calls), think="ok"),
    "extra_bracket": lambda rng, calls: reply(dump(calls, rng) + "]", think="ok"),
    "two_json_values": lambda rng, calls: reply(dump(calls, rng) + " " + dump(calls, rng), think="ok"),
    "comment_in_json": lambda rng, calls: reply("// calls\n" + dump(calls, rng), think="ok"),
    "nan_argument": lambda rng, calls: reply(dump([dict(calls[0], arguments={"x": float("nan")})], rng),
                                             think="ok"),
    "bom_before_json": lambda rng, calls: reply("\ufeff" + dump(calls, rng), think="ok"),
    "nbsp_inside_json": lambda rng, calls: reply(dump(calls, rng).replace(" ", "\u00a0", 1), think="ok"),
    "string_encoded_broken": lambda rng, calls: reply(json.dumps(dump(calls, rng)[:-1]), think="ok"),
    "string_encoded_twice": lambda rng, calls: reply(json.dumps(json.dumps(json.dumps(calls))), think="ok"),
    # structure
    "null_block": lambda rng, calls: reply("null", think="ok"),
    "empty_list_block": lambda rng, calls: reply("[]", think="ok"),
    "empty_object_block": lambda rng, calls: reply("{}", think="ok"),
    "list_of_strings": lambda rng, calls: reply(json.dumps([c["name"] for c in calls]), think="ok"),
    "nested_list": lambda rng, calls: reply(json.dumps([calls]), think="ok"),
    "name_is_list": lambda rng, calls: reply(json.dumps([dict(c, name=[c["name"]]) for c in calls]), think="ok"),
    "name_is_number": lambda rng, calls: reply(json.dumps([dict(c, name=7) for c in calls]), think="ok"),
    "arguments_null": lambda rng, calls: reply(json.dumps([dict(c, arguments=None) for c in calls]), think="ok"),
    "extra_call_keys": lambda rng, calls: reply(json.dumps([dict(c, id="call_0") for c in calls]), think="ok"),
    # replies the release cannot score (it raises): the project must still give a number
    "number_block": lambda rng, calls: reply(str(rng.randint(0, 99)), think=rng.choice(("ok", None))),
    "true_block": lambda rng, calls: reply("true", think=rng.choice(("ok", None))),
    "string_encoded_number": lambda rng, calls: reply(json.dumps("42"), think="ok"),
    "deep_nesting": lambda rng, calls: reply("[" * 5000 + "]" * 5000, think=rng.choice(("ok", None))),
    # whitespace and unicode
    "newlines_around_json": lambda rng, calls: reply(f"\n\n\t{dump(calls, rng)}\n  ", think="ok"),
    "unicode_spaces_around_json": lambda rng, calls: reply(f"\u3000\u00a0{dump(calls, rng)}\u2003", think="ok"),
    "crlf_reply": lambda rng, calls: reply(dump(calls, rng, "indented").replace("\n", "\r\n"), think="a\r\nb",
                                           mid="\r\n"),
    "zero_width_in_name": lambda rng, calls: reply(json.dumps([dict(calls[0], name="\u200b" + calls[0]["name"])]
                                                              + calls[1:]), think="ok"),
    "fullwidth_name": lambda rng, calls: reply(json.dumps([dict(calls[0], name=calls[0]["name"].translate(
        {c: c + 0xFEE0 for c in range(0x21, 0x7F)}))] + calls[1:]), think="ok"),
    "unicode_escaped_vs_raw": lambda rng, calls: reply(dump(calls, rng, "raw_unicode"), think="思考"),
    # text outside the tags
    "text_before": lambda rng, calls: reply(dump(calls, rng), think="ok", pre="Sure! Let me see.\n"),
    "text_between": lambda rng, calls: reply(dump(calls, rng), think="ok", mid="\nI will now call it:\n"),
    "text_after": lambda rng, calls: reply(dump(calls, rng), think="ok", post="\nDone. Anything else?"),
    "end_tokens_after": lambda rng, calls: reply(dump(calls, rng), think="ok", post="<|im_end|>\n<|endoftext|>"),
    "two_assistant_turns": lambda rng, calls: PROMPT_PREFIX + reply(dump(calls, rng), think="first")
                                               + "<|im_end|>\n<|im_start|>user\nagain<|im_end|>\n"
                                               "<|im_start|>assistant\nNo call this time.",
    # the answer side
    "empty_answer_empty_block": lambda rng, calls: (reply("[]", think="none fits"), "[]"),
    "empty_answer_no_block": lambda rng, calls: ("<think>none fits</think>\nNo tool applies.", "[]"),
    "empty_answer_with_call": lambda rng, calls: (reply(dump(calls, rng), think="ok"), "[]"),
    "answer_string_encoded": lambda rng, calls: (reply(dump(calls, rng), think="ok"), json.dumps(json.dumps(calls))),
    "answer_single_object": lambda rng, calls: (reply(dump(calls, rng), think="ok"), json.dumps(calls[0])),
    # every call edit, with the think block and the plain layout
    **{f"edit_{name}": (lambda edit: lambda rng, calls: reply(dump(edit(calls, rng), rng), think="ok"))(edit)
       for name, edit in CALL_EDITS.items() if name != "exact"},
}
MULTI_CALL_KINDS = {"correct_reordered_calls", "one_block_per_call", "edit_reordered_calls", "edit_dropped_call",
                    "edit_swapped_arguments"}


def random_mix(rng: random.Random, calls: list) -> str:
    """A reply with a random think style, call edit, JSON style, block layout and outside text."""
    edited = CALL_EDITS[rng.choice(sorted(CALL_EDITS))](calls, rng)
    body = dump(edited, rng, rng.choice(JSON_STYLES)) if edited else "[]"
    if rng.random() < 0.15:
        body = body[: rng.randint(0, len(body))]  # cut anywhere
    think = rng.choice((None, "", *THOUGHTS))
    text = reply(body, think=think, pre=rng.choice(("", "", "Okay. ", "</think>", "<think>")),
                 mid=rng.choice(("\n", "", " ", "\n\nCalling:\n")),
                 post=rng.choice(("", "", "<|im_end|>", "\n<tool_call>[]</tool_call>", " thanks", "<think>")))
    if rng.random() < 0.1:
        text = PROMPT_PREFIX + text
    if rng.random() < 0.1:
        text = text.replace("</tool_call>", "", 1)
    return text


def draw_calls(rng: random.Random, answers: list, multi: bool) -> tuple[str, list]:
    """(source ids, calls): one record's answer, or two or three joined when `multi` is asked."""
    if not multi:
        record_id, calls = rng.choice(answers)
        return record_id, calls
    drawn = rng.sample(answers, rng.choice((2, 3)))
    return "+".join(r for r, _ in drawn), [c for _, calls in drawn for c in calls]


def make_cases(seed: int = SEED) -> list[dict]:
    rng = random.Random(seed)
    answers = shipped_answers()
    cases = []
    for kind in sorted(CASES):
        for i in range(PER_KIND):
            multi = kind in MULTI_CALL_KINDS or i % 4 == 3  # every fourth draw of a kind has several calls
            source, calls = draw_calls(rng, answers, multi)
            made = CASES[kind](rng, calls)
            text, answer = made if isinstance(made, tuple) else (made, json.dumps(calls))
            cases.append({"kind": kind, "source": source, "reply": text, "answer": answer})
    for _ in range(RANDOM_MIXES):
        source, calls = draw_calls(rng, answers, rng.random() < 0.3)
        cases.append({"kind": "random_mix", "source": source, "reply": random_mix(rng, calls),
                      "answer": json.dumps(calls)})
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    with open(args.out, "w", encoding="utf-8") as f:
        for case in make_cases():
            f.write(json.dumps(case, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
