"""API-Bank level-1 checker: the rules of docs/FORMATS.md §5 and oracle / empty replies on the 389 real calls."""

from __future__ import annotations

from tooln1_jax.eval import datasets
from tooln1_jax.eval.checkers import apibank
from tooln1_jax.eval.checkers.common import calls_from_records

APIS = [
    {"name": "AddMeeting", "description": "", "parameters": {
        "meeting_topic": {"type": "str"}, "attendees": {"type": "list(str)"}, "token": {"type": "str"}}},
    {"name": "BookHotel", "description": "", "parameters": {"name": {"type": "str"}, "room_count": {"type": "int"}}},
    {"name": "TimedSwitch", "description": "", "parameters": {"name": {"type": "str"}, "on": {"type": "bool"}}},
    {"name": "RecordHealthData", "description": "", "parameters": {"health_data": {"type": "list"}}},
]
MEETING = {"api_name": "AddMeeting", "param_dict": {"meeting_topic": "Meeting with John",
                                                     "attendees": "['John Smith', 'Jane Doe']", "token": "a1b2"}}


def check(name, args, truth, **kwargs):
    return apibank.check(APIS, [{name: args}], truth, **kwargs)


def test_the_exact_ground_truth_passes_in_both_modes():
    args = {"meeting_topic": "Meeting with John", "attendees": ["John Smith", "Jane Doe"], "token": "a1b2"}
    assert check("AddMeeting", args, MEETING).valid
    assert check("AddMeeting", args, MEETING, exact=True).valid
    assert check("AddMeeting", dict(MEETING["param_dict"]), MEETING, exact=True).valid  # the strings themselves


def test_api_name_must_match():
    verdict = check("AddAgenda", {"meeting_topic": "x"}, MEETING)
    assert not verdict.valid and "wrong API" in verdict.reason


def test_parameter_names_must_be_exactly_the_expected_ones():
    base = {"meeting_topic": "Meeting with John", "attendees": ["John Smith", "Jane Doe"], "token": "a1b2"}
    assert not check("AddMeeting", {k: v for k, v in base.items() if k != "token"}, MEETING).valid
    assert not check("AddMeeting", {**base, "location": "office"}, MEETING).valid


def test_strings_compare_after_standardisation_and_exactly_in_strict_mode():
    args = {"meeting_topic": "meeting-with-john", "attendees": ["john smith", "JANE DOE"], "token": "A1B2"}
    assert check("AddMeeting", args, MEETING).valid
    assert not check("AddMeeting", args, MEETING, exact=True).valid
    assert not check("AddMeeting", {**args, "meeting_topic": "Meeting with Jon"}, MEETING).valid


def test_typed_parameters_compare_as_the_literal_their_string_spells():
    truth = {"api_name": "BookHotel", "param_dict": {"name": "Hilton", "room_count": "2"}}
    assert check("BookHotel", {"name": "Hilton", "room_count": 2}, truth).valid
    assert check("BookHotel", {"name": "Hilton", "room_count": "2"}, truth).valid
    assert not check("BookHotel", {"name": "Hilton", "room_count": 3}, truth).valid
    assert not check("BookHotel", {"name": "Hilton", "room_count": True}, truth).valid
    switch = {"api_name": "TimedSwitch", "param_dict": {"name": "lamp", "on": "True"}}
    assert check("TimedSwitch", {"name": "lamp", "on": True}, switch).valid
    assert not check("TimedSwitch", {"name": "lamp", "on": 1}, switch).valid
    assert not check("TimedSwitch", {"name": "lamp", "on": False}, switch).valid


def test_lists_compare_in_order_and_objects_key_by_key():
    assert not check("AddMeeting", {"meeting_topic": "Meeting with John", "attendees": ["Jane Doe", "John Smith"],
                                    "token": "a1b2"}, MEETING).valid
    truth = {"api_name": "RecordHealthData",
             "param_dict": {"health_data": "[{'name': 'blood_pressure', 'value': '120/80'}]"}}
    assert check("RecordHealthData", {"health_data": [{"name": "Blood Pressure", "value": "120/80"}]}, truth).valid
    assert not check("RecordHealthData", {"health_data": [{"name": "blood_pressure", "value": "130/80"}]},
                     truth).valid
    assert not check("RecordHealthData", {"health_data": [{"name": "blood_pressure"}]}, truth).valid


def test_the_first_call_is_scored_and_no_call_fails():
    args = {"meeting_topic": "Meeting with John", "attendees": ["John Smith", "Jane Doe"], "token": "a1b2"}
    assert apibank.check(APIS, [{"AddMeeting": args}, {"BookHotel": {}}], MEETING).valid
    assert not apibank.check(APIS, [{"BookHotel": {}}, {"AddMeeting": args}], MEETING).valid
    assert not apibank.check(APIS, [], MEETING).valid
    assert not apibank.check(APIS, None, MEETING).valid
    assert not apibank.check(APIS, [{"AddMeeting": "not an object"}], MEETING).valid


def test_level_1_has_389_calls_and_oracle_replies_score_100_percent_in_both_modes():
    examples = datasets.load("apibank")
    assert len(examples) == 389
    for example in examples:
        truth = example.ground_truth
        oracle = [{truth["api_name"]: dict(truth["param_dict"])}]
        assert apibank.check(example.tools, oracle, truth).valid, example.id
        assert apibank.check(example.tools, oracle, truth, exact=True).valid, example.id
        # The record's reference answer is the same call.
        assert apibank.check(example.tools, calls_from_records(example.record()["answer"]), truth, exact=True).valid


def test_empty_replies_score_0():
    for example in datasets.load("apibank"):
        assert not apibank.check(example.tools, None, example.ground_truth).valid
        assert not apibank.check(example.tools, [], example.ground_truth).valid
