"""Parsing inbound frames and the shape of every outbound frame."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chat import protocol

LIMITS = {"max_chars": 10, "max_frame_chars": 100}

# Thousands of random inputs per property, as a fuzzer would send.
THOUSANDS = 2000


def parse(text_data=None, bytes_data=None):
    return protocol.parse_chat_frame(text_data, bytes_data, **LIMITS)


def test_valid_frame_yields_trimmed_message():
    assert parse('{"message": "  hi  ", "extra": [1, 2]}') == "hi"


def test_message_of_exactly_the_limit_is_accepted():
    assert parse(json.dumps({"message": "x" * 10})) == "x" * 10


@pytest.mark.parametrize(
    ("text_data", "bytes_data", "code"),
    [
        (None, b"{}", "binary_frame"),
        ("x" * 101, None, "frame_too_large"),
        ("{", None, "invalid_json"),
        ("", None, "invalid_json"),
        ("[" * 99, None, "invalid_json"),
        ("[]", None, "not_an_object"),
        ("1", None, "not_an_object"),
        ("{}", None, "missing_message"),
        ('{"message": false}', None, "message_not_string"),
        ('{"message": {"a": 1}}', None, "message_not_string"),
        ('{"message": " \\u00a0\\n"}', None, "empty_message"),
        ('{"message": "12345678901"}', None, "message_too_long"),
    ],
)
def test_bad_frames_are_refused_with_their_code(text_data, bytes_data, code):
    with pytest.raises(protocol.FrameRefused) as refusal:
        parse(text_data, bytes_data)
    assert refusal.value.code == code
    assert refusal.value.detail


def test_chat_message_event_has_the_handler_type_and_message():
    assert protocol.chat_message_event("hi") == {"type": "chat.message", "message": "hi"}


def test_message_frame_is_tutorial_compatible():
    frame = protocol.message_frame(protocol.chat_message_event("<b>hi</b>"))
    assert json.loads(frame) == {"message": "<b>hi</b>"}


def test_error_frame_shape():
    assert json.loads(protocol.error_frame("invalid_json", "Not JSON.")) == {
        "error": {"code": "invalid_json", "detail": "Not JSON."}
    }


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=10,
)


@settings(max_examples=THOUSANDS)
@given(st.one_of(st.text(), json_values.map(json.dumps), st.binary()))
def test_any_frame_is_accepted_or_refused_and_never_crashes(frame):
    text_data, bytes_data = (None, frame) if isinstance(frame, bytes) else (frame, None)
    try:
        message = parse(text_data, bytes_data)
    except protocol.FrameRefused as refusal:
        assert refusal.code and refusal.detail
    else:
        assert message == message.strip() and 0 < len(message) <= LIMITS["max_chars"]


@given(st.dictionaries(st.text(), json_values), st.text())
def test_any_object_with_a_message_string_is_judged_on_the_message_alone(extra, message):
    payload = {**extra, "message": message}
    try:
        assert parse(json.dumps(payload)) == message.strip()
    except protocol.FrameRefused as refusal:
        assert refusal.code in {"empty_message", "message_too_long", "frame_too_large"}
