"""Parsing inbound frames and the shape of every outbound frame."""

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chat import protocol, services
from chat.models import Message

LIMITS = {"max_chars": 10, "max_frame_chars": 100}

# Thousands of random inputs per property, as a fuzzer would send.
THOUSANDS = 2000


def parse(text_data=None, bytes_data=None):
    return protocol.parse_chat_frame(text_data, bytes_data, **LIMITS)


def test_valid_frame_yields_trimmed_message():
    assert parse('{"message": "  hi  ", "extra": [1, 2]}') == protocol.ChatFrame("hi")


def test_client_id_is_kept():
    frame = parse('{"message": "hi", "client_id": "a1-B_2"}')
    assert frame == protocol.ChatFrame("hi", "a1-B_2")


@pytest.mark.parametrize("client_id", ["", "has space", "x" * 65, 7, ["a"]])
def test_malformed_client_id_is_refused(client_id):
    with pytest.raises(protocol.FrameRefused) as refusal:
        parse(json.dumps({"message": "hi", "client_id": client_id}))
    assert refusal.value.code == "invalid_client_id"


def test_refusal_of_a_bad_message_names_its_client_id():
    with pytest.raises(protocol.FrameRefused) as refusal:
        parse(json.dumps({"message": "x" * 11, "client_id": "abc"}))
    assert (refusal.value.code, refusal.value.client_id) == ("message_too_long", "abc")


def test_message_of_exactly_the_limit_is_accepted():
    assert parse(json.dumps({"message": "x" * 10})).message == "x" * 10


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


def stored_message(**fields) -> Message:
    defaults = {
        "room_id": "lobby",
        "seq": 7,
        "display_name": "alice",
        "text": "<b>hi</b>",
        "created": datetime(2026, 11, 27, 12, 0, tzinfo=UTC),
    }
    return Message(**{**defaults, **fields})


def test_catch_up_request_without_a_message_is_a_page_request():
    assert parse('{"catch_up": {"after": 42}}') == protocol.CatchUpRequest(42)


def test_a_frame_with_a_message_is_a_message_even_beside_catch_up():
    assert parse('{"message": "hi", "catch_up": {"after": 1}}') == protocol.ChatFrame("hi")


@pytest.mark.parametrize(
    "catch_up", ['{"after": -1}', '{"after": "3"}', '{"after": true}', '{"after": 1.5}', "{}", "3"]
)
def test_malformed_catch_up_request_is_refused_as_invalid_catch_up(catch_up):
    with pytest.raises(protocol.FrameRefused) as refused:
        parse(f'{{"catch_up": {catch_up}}}')
    assert refused.value.code == "invalid_catch_up"


def test_catch_up_frame_shape():
    assert json.loads(protocol.catch_up_frame(True, 200)) == {
        "catch_up": {"more": True, "next_after": 200}
    }


def test_chat_message_event_has_the_handler_type_and_every_field():
    assert protocol.chat_message_event(stored_message(author_id=3, client_id="c1")) == {
        "type": "chat.message",
        "message": "<b>hi</b>",
        "id": 7,
        "user": "alice",
        "guest": False,
        "bot": False,
        "ts": "2026-11-27T12:00:00+00:00",
        "client_id": "c1",
    }


def test_message_frame_is_tutorial_compatible_with_fields_beside_message():
    frame = json.loads(protocol.message_frame(protocol.chat_message_event(stored_message())))
    assert frame == {
        "message": "<b>hi</b>",
        "id": 7,
        "user": "alice",
        "guest": True,
        "bot": False,
        "ts": "2026-11-27T12:00:00+00:00",
        "client_id": None,
    }


def test_a_bots_message_is_shown_as_a_bot_never_as_a_guest():
    frame = json.loads(
        protocol.message_frame(protocol.chat_message_event(stored_message(bot=True)))
    )
    assert (frame["user"], frame["guest"], frame["bot"]) == ("alice", False, True)


def test_history_frames_are_marked():
    event = protocol.chat_message_event(stored_message())
    assert json.loads(protocol.message_frame(event, history=True))["history"] is True
    assert "history" not in json.loads(protocol.message_frame(event))


def test_presence_frame_shape():
    event = protocol.presence_event(3, ["alice", "bob (guest)"])
    assert event["type"] == "chat.presence"
    assert json.loads(protocol.presence_frame(event)) == {
        "presence": {"count": 3, "names": ["alice", "bob (guest)"]}
    }


def test_error_frame_shape():
    refusal = protocol.FrameRefused("invalid_json", "Not JSON.")
    assert json.loads(protocol.error_frame(refusal)) == {
        "error": {"code": "invalid_json", "detail": "Not JSON."}
    }


def test_error_frame_names_the_refused_client_id():
    refusal = protocol.FrameRefused("rate_limited", "Slow down.", "c1")
    assert json.loads(protocol.error_frame(refusal))["error"]["client_id"] == "c1"


@pytest.mark.parametrize(
    ("query", "after"),
    [
        (b"", None),
        (b"after=12", 12),
        (b"x=1&after=0", 0),
        (b"after=9223372036854775807", 2**63 - 1),
        (b"after=007", 7),
        (b"after=3&after=x", 3),  # the first of several, as before
        (b"after=%31%32", 12),  # percent-encoded, as a URL may be
        (b"as=abc&after=4", 4),
    ],
)
def test_parse_after_reads_a_whole_number_or_nothing(query, after):
    assert protocol.parse_after(query) == after


@pytest.mark.parametrize(
    "query",
    [
        b"after=-1",
        b"after=1e3",
        b"after=+1",
        b"after= 1",
        b"after=1_0",
        b"after=",
        b"after=\xd9\xa1",  # Arabic-Indic one, which int() reads
        b"after=9223372036854775808",  # past PostgreSQL's bigint
        b"after=" + b"9" * 4301,  # past int()'s own digit limit
    ],
)
def test_parse_after_refuses_anything_but_a_message_id(query):
    with pytest.raises(protocol.FrameRefused) as refusal:
        protocol.parse_after(query)
    assert refusal.value.code == "invalid_after"


@pytest.mark.parametrize(
    ("query", "sign_in"),
    [
        (b"", None),
        (b"after=3", None),
        (b"as=0123abcd", "0123abcd"),
        (b"as=", ""),  # named but blank: a sign-in no author has
        (b"after=3&as=ab%2Fcd&as=ef", "ab/cd"),
    ],
)
def test_parse_sign_in_reads_the_first_as_percent_decoded(query, sign_in):
    assert protocol.parse_sign_in(query) == sign_in


@given(st.binary())
def test_any_query_string_gives_an_id_nothing_or_invalid_after(query):
    try:
        after = protocol.parse_after(query)
    except protocol.FrameRefused as refusal:
        assert refusal.code == "invalid_after"
    else:
        assert after is None or 0 <= after <= protocol.MAX_SEQ


# Every code point: hypothesis leaves lone surrogates out of st.text() unless asked, and
# they are what JSON.stringify sends for half an emoji.
any_text = st.text(st.characters(exclude_categories=()))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda children: st.lists(children) | st.dictionaries(any_text, children),
    max_leaves=10,
)


@settings(max_examples=THOUSANDS)
@given(st.one_of(any_text, json_values.map(json.dumps), st.binary()))
def test_any_frame_is_accepted_or_refused_and_never_crashes(frame):
    text_data, bytes_data = (None, frame) if isinstance(frame, bytes) else (frame, None)
    try:
        message = parse(text_data, bytes_data)
    except protocol.FrameRefused as refusal:
        assert refusal.code and refusal.detail
    else:
        if isinstance(message, protocol.CatchUpRequest):
            assert message.after >= 0
            return
        text = message.message
        assert text == text.strip() and 0 < len(text) <= LIMITS["max_chars"]
        text.encode("utf-8")  # storable: no lone surrogate
        assert "\x00" not in text  # PostgreSQL refuses NUL in text


@settings(max_examples=THOUSANDS)
@given(st.dictionaries(any_text, json_values), any_text)
def test_any_object_with_a_message_string_is_judged_on_the_message_alone(extra, message):
    payload = {**extra, "message": message}
    try:
        assert parse(json.dumps(payload)).message == message.strip()
    except protocol.FrameRefused as refusal:
        assert refusal.code in {
            "empty_message",
            "message_too_long",
            "frame_too_large",
            "invalid_client_id",
            "invalid_character",
        }
        if refusal.code == "invalid_character":
            assert protocol.unstorable_character(message) is not None


@pytest.mark.parametrize(
    "char",
    ["\ud83d", "\udfff", "\x00", "\x07", "\x0b", "\x0c", "\x1b", "\x7f", "\x85", "\x9f"]
    + ["\ufdd0", "\ufdef", "\ufffe", "\uffff", "\U0001fffe", "\U0010ffff"],
)
def test_unstorable_characters_are_found(char):
    assert protocol.unstorable_character(f"ok {char} ok") == char


@pytest.mark.parametrize(
    "text",
    ["tab\tand\r\nline", "\U0001f600 whole emoji", "\u2028\u2029", "\ue000 private", "\ufeff"]
    + ["\u0378 unassigned today", "\ufdcf", "\ufff0", "Zoë 李雷 Ђорђе"],
)
def test_storable_text_passes(text):
    assert protocol.unstorable_character(text) is None


def test_typing_true_without_a_message_is_a_typing_signal():
    assert parse('{"typing": true}') == protocol.TypingSignal()


def test_a_frame_with_a_message_is_a_message_even_beside_typing():
    assert parse('{"message": "hi", "typing": true}') == protocol.ChatFrame("hi")


@pytest.mark.parametrize("typing", ["false", '"yes"', "1", "null", "{}"])
def test_anything_but_typing_true_is_refused_as_invalid_typing(typing):
    with pytest.raises(protocol.FrameRefused) as refused:
        parse(f'{{"typing": {typing}}}')
    assert refused.value.code == "invalid_typing"


def test_typing_event_and_frame_shapes():
    author = services.Author("Zoë", guest_key="k")
    event = protocol.typing_event(author, "specific.abc!123")
    assert event == {
        "type": "chat.typing",
        "user": "Zoë",
        "guest": True,
        "sender_channel": "specific.abc!123",
    }
    assert json.loads(protocol.typing_frame(event)) == {"typing": {"user": "Zoë", "guest": True}}
