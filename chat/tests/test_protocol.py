"""Parsing inbound frames and the shape of every outbound frame."""

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from autobahn.twisted.websocket import WebSocketServerProtocol
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


@pytest.mark.parametrize("catch_up", ['{"after": 42}', '{"after": -1}', "{}", "3", "null"])
def test_a_catch_up_page_request_is_refused_with_where_history_is_read(catch_up):
    with pytest.raises(protocol.FrameRefused) as refused:
        parse(f'{{"catch_up": {catch_up}}}')
    assert refused.value.code == "catch_up_over_http"
    assert "/messages/?after=" in refused.value.detail


def test_a_frame_with_a_message_is_a_message_even_beside_catch_up():
    assert parse('{"message": "hi", "catch_up": {"after": 1}}') == protocol.ChatFrame("hi")


def test_catch_up_frame_shape():
    assert json.loads(protocol.catch_up_frame(False, 3, 200)) == {
        "catch_up": {"recovered": False, "after": 3, "until": 200}
    }
    assert json.loads(protocol.catch_up_frame(True, 3, 7)) == {
        "catch_up": {"recovered": True, "after": 3, "until": 7}
    }


def test_catch_up_frame_carries_the_changes_state_when_given():
    assert json.loads(protocol.catch_up_frame(True, 3, 7, (False, 2, 90))) == {
        "catch_up": {
            "recovered": True,
            "after": 3,
            "until": 7,
            "changes": {"recovered": False, "after": 2, "until": 90},
        }
    }


def test_an_edit_frame_names_its_message_and_its_trimmed_new_text():
    assert parse('{"edit": {"id": 42, "message": "  new  "}}') == protocol.EditFrame(42, "new")


def test_a_delete_frame_names_its_message():
    assert parse('{"delete": {"id": 42}}') == protocol.DeleteFrame(42)


@pytest.mark.parametrize(
    "target", ['{"id": "42"}', '{"id": true}', '{"id": 0}', '{"id": 1.5}', "{}", "42", "null"]
)
@pytest.mark.parametrize("kind", ["edit", "delete"])
def test_an_edit_or_delete_without_a_message_id_is_refused_as_invalid_id(kind, target):
    with pytest.raises(protocol.FrameRefused) as refused:
        parse(f'{{"{kind}": {target}}}')
    assert refused.value.code == "invalid_id"


@pytest.mark.parametrize(
    ("text", "code"),
    [('""', "empty_message"), ("3", "message_not_string"), ('"\\u0000"', "invalid_character")],
)
def test_an_edits_text_follows_the_message_rule(text, code):
    with pytest.raises(protocol.FrameRefused) as refused:
        parse(f'{{"edit": {{"id": 1, "message": {text}}}}}')
    assert refused.value.code == code


def test_an_edit_without_its_text_is_refused_as_missing_message():
    with pytest.raises(protocol.FrameRefused) as refused:
        parse('{"edit": {"id": 1}}')
    assert refused.value.code == "missing_message"


def test_an_edits_change_frame_has_no_top_level_message_key():
    edited = datetime(2026, 11, 27, 12, 5, tzinfo=UTC)
    event = protocol.chat_change_event(stored_message(text="new", edited=edited, change=7))
    assert event["type"] == "chat.change"
    assert json.loads(protocol.change_frame(event)) == {
        "edit": {"id": 7, "message": "new", "edited": "2026-11-27T12:05:00+00:00", "change": 7}
    }


def test_a_deletions_change_frame_carries_neither_text_nor_message_key():
    event = protocol.chat_change_event(stored_message(text="", deleted=True, change=8))
    assert json.loads(protocol.change_frame(event)) == {"delete": {"id": 7, "change": 8}}


def test_parse_changes_reads_a_change_number_and_refuses_anything_else():
    assert protocol.parse_changes(b"after=3&changes=12") == 12
    assert protocol.parse_changes(b"after=3") is None
    with pytest.raises(protocol.FrameRefused) as refused:
        protocol.parse_changes(b"changes=-1")
    assert refused.value.code == "invalid_changes"


def test_one_rooms_batch_is_one_chat_message_event_for_one_and_chat_messages_for_more():
    one, two = (protocol.chat_message_event(stored_message(seq=seq)) for seq in (1, 2))
    assert protocol.room_messages_event([one]) == one
    assert protocol.room_messages_event([one, two]) == {
        "type": "chat.messages",
        "messages": [one, two],
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
        "edited": None,
        "deleted": False,
        "change": 0,
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
        "edited": None,
        "deleted": False,
        "change": 0,
    }


def test_a_bots_message_is_shown_as_a_bot_never_as_a_guest():
    frame = json.loads(
        protocol.message_frame(protocol.chat_message_event(stored_message(bot=True)))
    )
    assert (frame["user"], frame["guest"], frame["bot"]) == ("alice", False, True)


def test_history_frames_are_marked():
    event = protocol.chat_message_event(stored_message())
    assert json.loads(protocol.message_frame(event, history=True))["history"] is True
    assert (
        json.loads(protocol.message_frame(event, history=True, room_change=5))["room_change"] == 5
    )
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


def test_error_frame_gives_a_sanctions_end_for_the_reader_to_show_in_their_time():
    ends = datetime(2026, 12, 7, 16, 39, 13, 512, tzinfo=UTC)
    error = json.loads(protocol.error_frame(protocol.FrameRefused("muted", "x", until=ends)))
    assert error["error"]["until"] == "2026-12-07T16:39:13+00:00"
    assert "until" not in json.loads(protocol.error_frame(protocol.FrameRefused("muted", "x")))


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
# Small values: a frame over LIMITS["max_frame_chars"] is refused for its size alone, so
# big ones only prove frame_too_large again (three quarters of the examples, and most of
# the time spent drawing them, before).
SMALL = 3
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda children: (
        st.lists(children, max_size=SMALL) | st.dictionaries(any_text, children, max_size=SMALL)
    ),
    max_leaves=SMALL,
)
# The fields a frame may carry beside "message", and any other key.
frame_keys = st.sampled_from(["client_id", "typing", "ping", "edit", "delete", "catch_up"])


@settings(max_examples=THOUSANDS)
@given(st.one_of(any_text, json_values.map(json.dumps), st.binary()))
def test_any_frame_is_accepted_or_refused_and_never_crashes(frame):
    text_data, bytes_data = (None, frame) if isinstance(frame, bytes) else (frame, None)
    try:
        message = parse(text_data, bytes_data)
    except protocol.FrameRefused as refusal:
        assert refusal.code and refusal.detail
    else:
        if isinstance(message, protocol.TypingSignal):
            return
        text = message.message
        assert text == text.strip() and 0 < len(text) <= LIMITS["max_chars"]
        text.encode("utf-8")  # storable: no lone surrogate
        assert "\x00" not in text  # PostgreSQL refuses NUL in text


@settings(max_examples=THOUSANDS)
@given(st.dictionaries(frame_keys | any_text, json_values, max_size=SMALL), any_text)
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
            "unbalanced_bidi",
        }
        if refusal.code == "unbalanced_bidi":
            assert protocol.unbalanced_bidi(message.strip()) is not None
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


# --- Close codes -------------------------------------------------------------------------

CLOSE_CODES = {name: value for name, value in vars(protocol).items() if name.startswith("CLOSE_")}
# Sent by autobahn itself, on its own failure path (serving.chat_daphne), not by sendClose.
SENT_BY_AUTOBAHN = {protocol.CLOSE_MESSAGE_TOO_BIG}
ROOM_JS = Path(protocol.__file__).parent / "static" / "chat" / "room.js"


@pytest.mark.parametrize("name", sorted(set(CLOSE_CODES) - {"CLOSE_MESSAGE_TOO_BIG"}))
def test_every_close_code_the_application_sends_is_one_autobahn_sends(name):
    # Daphne hands an application's close to autobahn's sendClose, which raises for any
    # code but 1000 and 3000-4999: the close never leaves, and the socket stays open, deaf.
    closing = WebSocketServerProtocol()
    closing.state = WebSocketServerProtocol.STATE_CLOSED  # the rule is checked first
    closing.sendClose(code=CLOSE_CODES[name], reason="reconnect")


def test_the_room_page_says_something_for_every_close_code():
    plain_closes = re.search(r"const PLAIN_CLOSES = \{(.*?)\};", ROOM_JS.read_text(), re.S)
    handled = {int(code) for code in re.findall(r"^\s*(\d{4}):", plain_closes[1], re.M)}
    assert set(CLOSE_CODES.values()) <= handled


def test_a_ping_is_its_own_frame_kind():
    assert parse('{"ping": true}') == protocol.Ping()


@pytest.mark.parametrize("value", ["1", "false", '"yes"', "null"])
def test_a_malformed_ping_is_refused_and_not_as_missing_message(value):
    with pytest.raises(protocol.FrameRefused) as refused:
        parse(f'{{"ping": {value}}}')
    assert refused.value.code == "invalid_ping"


def test_a_pong_frame_is_exactly_pong_true():
    assert json.loads(protocol.pong_frame()) == {"pong": True}


WIDE = {"max_chars": 1000, "max_frame_chars": 10000}
RLO, LRO, RLE, PDF, RLI, FSI, PDI = (
    "\u202e",
    "\u202d",
    "\u202b",
    "\u202c",
    "\u2067",
    "\u2068",
    "\u2069",
)


@pytest.mark.parametrize(
    ("text", "culprit"),
    [
        (f"see https://x.example/{RLO}gpj.exe", RLO),  # the link that reads .../exe.jpg
        (f"{RLI}שלום", RLI),
        (f"a{PDF}b", PDF),  # closes nothing
        (f"a{PDI}b", PDI),
        (f"{RLO}one line\nthe next{PDF}", RLO),  # a line end closes it, not the next line
        (f"{RLI}{RLO}crossed{PDI}{PDF}", PDI),  # closes the isolate inside the override
    ],
)
def test_a_message_with_an_unclosed_or_stray_direction_control_is_refused(text, culprit):
    with pytest.raises(protocol.FrameRefused) as refused:
        protocol.parse_chat_frame(json.dumps({"message": text, "client_id": "c"}), None, **WIDE)
    assert (refused.value.code, refused.value.client_id) == ("unbalanced_bidi", "c")
    assert f"U+{ord(culprit):04X}" in refused.value.detail
    assert protocol.unbalanced_bidi(text) == culprit


@pytest.mark.parametrize(
    "text",
    [
        "שלום \u200fעולם\u200e ok",  # marks open nothing
        "\u061cمرحبا",
        f"file {RLO}gpj.exe{PDF} (reversed on purpose)",
        f"{FSI}user{PDI}: {RLE}{RLI}nested{PDI}{PDF}",
        f"{LRO}a{PDF}\n{RLI}b{PDI}",
    ],
)
def test_right_to_left_text_with_marks_or_closed_controls_passes(text):
    assert protocol.parse_chat_frame(json.dumps({"message": text}), None, **WIDE).message == text


@settings(max_examples=THOUSANDS)
@given(st.text(alphabet=st.sampled_from(f"ab\n{RLO}{LRO}{RLE}{PDF}{RLI}{FSI}{PDI}\u200f")))
def test_an_accepted_message_leaves_no_direction_open_at_any_line_end(text):
    try:
        message = protocol.parse_chat_frame(json.dumps({"message": text}), None, **WIDE).message
    except protocol.FrameRefused:
        return
    for line in message.split("\n"):
        depth = 0
        for char in line:
            depth += char in {RLO, LRO, RLE, RLI, FSI}
            depth -= char in {PDF, PDI}
            assert depth >= 0
        assert depth == 0


def test_an_overloaded_refusal_carries_its_retry_hint_and_client_id():
    frame = json.loads(protocol.error_frame(protocol.overloaded("c1", 0.5)))
    assert frame == {
        "error": {
            "code": "overloaded",
            "detail": "The server is busy: the message was not stored. Send it again in 0.5 s.",
            "retry_after": 0.5,
            "client_id": "c1",
        }
    }


@given(
    texts=st.lists(st.text(max_size=40), max_size=4),
    room=st.text(max_size=20),
    next_after=st.one_of(st.none(), st.integers(min_value=1)),
    edited=st.booleans(),
)
def test_a_page_written_a_message_at_a_time_is_byte_for_byte_json_dumps_of_it(
    texts, room, next_after, edited
):
    moment = datetime(2026, 12, 7, 20, 0, tzinfo=UTC)
    rows = [
        services.StoredMessage(
            text, seq, "Zoë", None, moment, "", False, moment if edited else None, False, seq
        )
        for seq, text in enumerate(texts, start=1)
    ]
    page = {"room": room, "messages": rows, "next_after": next_after, "gone_until": 0}
    written = protocol.page_json(page, [protocol.message_json(row) for row in rows])
    fields = [protocol.message_fields(row) for row in rows]
    assert written == json.dumps(page | {"messages": fields})
